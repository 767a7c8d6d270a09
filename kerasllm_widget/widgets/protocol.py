"""The chat widget's message protocol: kinds, envelope and payloads, defined once.

Mirrored by ``js/shared/protocol.ts``; ``tests/test_chat_widget.py`` checks that both list the same
kinds. Every custom message is a dict ``{"kind": ..., "id": ..., **fields}`` where ``id`` names the
request the message belongs to (chosen by the view that sent it, or by the kernel for a send made
from Python). Durable state (transcript, status, settings, model info) lives in traitlets; messages
carry what is transient: token deltas, the end of a reply, errors of one request, catch-up snapshots.

>>> envelope(CHAT_ERROR, "v1-3", reply_id=None, code="bad_request", message="empty text")
{'kind': 'chat.error', 'id': 'v1-3', 'reply_id': None, 'code': 'bad_request', 'message': 'empty text'}
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any

from kerasllm_widget.generation.events import DoneEvent, TokenEvent

PROTOCOL_VERSION = 1

# Front end -> kernel.
CHAT_SEND = "chat.send"  # {text}
CHAT_REGENERATE = "chat.regenerate"  # {}
CHAT_EDIT = "chat.edit"  # {message_id, text}: replace a user turn and everything after it
CHAT_CANCEL = "chat.cancel"  # {}: stop the reply being generated and drop queued sends
CHAT_CLEAR = "chat.clear"  # {}: start a new conversation
CHAT_SYNC = "chat.sync"  # {}: ask for a snapshot of the reply being generated

# Kernel -> front end.
CHAT_TOKEN = "chat.token"  # {reply_id, tokens: [TokenEvent dicts]}
CHAT_DONE = "chat.done"  # {reply_id, stop_reason, text, notice, stats}
CHAT_ERROR = "chat.error"  # {reply_id | None, code, message}
CHAT_SNAPSHOT = "chat.snapshot"  # {reply_id | None, text, count, tokens}

REQUEST_KINDS = frozenset(
    {CHAT_SEND, CHAT_REGENERATE, CHAT_EDIT, CHAT_CANCEL, CHAT_CLEAR, CHAT_SYNC}
)
RESPONSE_KINDS = frozenset({CHAT_TOKEN, CHAT_DONE, CHAT_ERROR, CHAT_SNAPSHOT})

# Error codes of `chat.error`. Only "generation" errors are also written into the transcript.
ERROR_BAD_REQUEST = "bad_request"
ERROR_NOT_READY = "not_ready"
ERROR_NOTHING_TO_DO = "nothing_to_do"
ERROR_GENERATION = "generation"
ERROR_LOAD = "load"

# Fields each request must carry, with their types, besides kind and id.
_REQUEST_FIELDS: dict[str, dict[str, type]] = {
    CHAT_SEND: {"text": str},
    CHAT_REGENERATE: {},
    CHAT_EDIT: {"message_id": str, "text": str},
    CHAT_CANCEL: {},
    CHAT_CLEAR: {},
    CHAT_SYNC: {},
}


class ProtocolError(ValueError):
    """A message from the front end that does not follow the protocol."""


@dataclass(frozen=True)
class Request:
    """A parsed front-end request."""

    kind: str
    id: str
    fields: dict[str, Any]


def envelope(kind: str, id: str, **fields: Any) -> dict[str, Any]:
    """The dict sent as one custom message."""
    return {"kind": kind, "id": id, **fields}


def parse_request(content: Any) -> Request:
    """Checks a custom message from the front end and returns it as a `Request`.

    Raises `ProtocolError` naming what is wrong, so that the widget can answer with a
    ``chat.error`` rather than fail silently.
    """
    if not isinstance(content, dict):
        raise ProtocolError(f"expected a message object, got {type(content).__name__}")
    kind = content.get("kind")
    request_id = content.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise ProtocolError("message has no string 'id'")
    if kind not in REQUEST_KINDS:
        raise ProtocolError(f"unknown message kind {kind!r}")
    fields: dict[str, Any] = {}
    for name, expected in _REQUEST_FIELDS[kind].items():
        value = content.get(name)
        if not isinstance(value, expected):
            raise ProtocolError(f"{kind} needs a {expected.__name__} field {name!r}")
        fields[name] = value
    return Request(kind=kind, id=request_id, fields=fields)


_counter = itertools.count(1)
_session = os.urandom(3).hex()


def new_id(prefix: str = "k") -> str:
    """An id unique within this kernel, for requests made from Python and transcript entries."""
    return f"{prefix}{_session}-{next(_counter)}"


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity (Jupyter's serializer refuses them): those become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def token_record(event: TokenEvent) -> dict[str, Any]:
    """A `TokenEvent` as it travels in ``chat.token`` (``TokenEvent.to_dict`` with finite floats)."""
    record = event.to_dict()
    record["logprob"] = finite(record["logprob"])
    for alternative in record["top_k"]:
        alternative["prob"] = finite(alternative["prob"])
    return record


def reply_stats(done: DoneEvent) -> dict[str, Any]:
    """The figures of a finished reply, as the status line and transcript show them."""
    return {
        "prompt_tokens": int(done.prompt_tokens),
        "generated_tokens": int(done.generated_tokens),
        "time_to_first_token_s": finite(done.time_to_first_token_s),
        "prefill_tokens_per_s": finite(done.prefill_tokens_per_s),
        "decode_tokens_per_s": finite(done.decode_tokens_per_s),
    }
