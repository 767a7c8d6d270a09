"""The ChatWidget's inspector tabs (Tokens, Attention, Probabilities) on its conversation.

The tabs send inspector requests over the chat's own comm; `ChatWidget` hands those messages to
the service built here and keeps the chat protocol for itself. The computations run on the
service's own thread, so a long attention pass never delays a Stop.
"""

from __future__ import annotations

from typing import Any

from kerasllm_widget.widgets._chat_source import ChatSource
from kerasllm_widget.widgets.inspector_service import InspectorService

_SETTINGS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "max_new_tokens",
)


def chat_inspector_service(chat: Any) -> InspectorService:
    """An `InspectorService` answering the inspector tabs of ``chat`` (a `ChatWidget`).

    Example:
        >>> service = chat_inspector_service(chat)  # doctest: +SKIP
        >>> service.handle({"kind": "attention.open", "id": "v1", "text": None})  # doctest: +SKIP
        True
    """
    source = ChatSource(chat=chat)
    service = InspectorService(
        chat,
        model=source.model,
        sequence=source.sequence,
        step_prompt=source.prompt_ids,
        settings=lambda: {name: getattr(chat, name) for name in _SETTINGS},
        busy=lambda: (getattr(chat, "status", None) or {}).get("state") == "generating",
    )
    source.watch(service.refresh)
    return service
