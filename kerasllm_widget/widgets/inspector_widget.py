"""What the standalone inspector widgets share: their bundle, and routing messages to a service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from kerasllm_widget.widgets._bundle import bundle
from kerasllm_widget.widgets._chat_source import ChatSource
from kerasllm_widget.widgets.inspector_service import InspectorService

__all__ = ["InspectorWidget", "bundle", "source_name"]


def source_name(source: Any) -> str:
    """A short label for a model or tokenizer: its preset name when it has one."""
    if isinstance(source, str):
        return Path(source).name
    for candidate in (source, getattr(source, "model", None)):
        name = getattr(candidate, "preset_name", "") if candidate is not None else ""
        if name:
            return Path(str(name)).name
    return type(source).__name__


class InspectorWidget(anywidget.AnyWidget):
    """An anywidget whose inspector requests are answered by an `InspectorService`."""

    # Bumped when what the views show changes on the kernel side (a chat got a new turn), so that
    # every open view asks again.
    revision = traitlets.Int(0).tag(sync=True)
    # Set when there is nothing to inspect (a chat whose model is still loading), shown as is.
    notice = traitlets.Unicode("").tag(sync=True)

    def _start_service(self, **kwargs: Any) -> None:
        self.service = InspectorService(self, **kwargs)
        self.on_msg(self._route_message)

    def _follow(self, model: Any, chat: Any) -> None:
        """Answers the views on the widget's ``text`` with ``model``, or, with ``follows_chat``
        set, on ``chat``'s conversation, and calls `_conversation_changed` when it changes."""
        self.source = ChatSource(model, chat, text=lambda: self.text)
        self._start_service(
            model=self.source.model,
            sequence=lambda t: self.source.sequence(
                t if t is not None or self.follows_chat else self.text
            ),
        )
        self.source.watch(self._conversation_changed)

    def _conversation_changed(self) -> None:
        self.revision += 1  # every open view asks again

    def _route_message(self, widget: Any, content: Any, buffers: Any) -> None:
        self.service.handle(content, buffers)

    def wait_idle(self, timeout: float | None = 60) -> bool:
        """Blocks until every request the views made so far has been answered.

        Example:
            >>> view.wait_idle(timeout=30)  # doctest: +SKIP
            True
        """
        return self.service.wait_idle(timeout)

    def close(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()
        super().close()
