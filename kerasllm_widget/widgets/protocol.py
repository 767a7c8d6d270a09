"""The chat widget's message protocol: kinds, fields and payloads, defined once.

Mirrored by ``js/shared/protocol.ts``; ``tests/test_chat_widget.py`` checks that both list the same
kinds. Every custom message is an envelope ``{"kind": ..., "id": ..., **fields}``, shared with the
inspectors' protocol (`kerasllm_widget.widgets.envelope`, re-exported here). Durable state
(transcript, status, settings, model info) lives in traitlets; messages carry what is transient:
token deltas, the end of a reply, errors of one request, catch-up snapshots.

>>> envelope(CHAT_ERROR, "v1-3", reply_id=None, code="bad_request", message="empty text")
{'kind': 'chat.error', 'id': 'v1-3', 'reply_id': None, 'code': 'bad_request', 'message': 'empty text'}
"""

from __future__ import annotations

from typing import Any

from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.widgets import envelope as _envelope
from kerasllm_widget.widgets.envelope import ProtocolError as ProtocolError
from kerasllm_widget.widgets.envelope import Request, finite
from kerasllm_widget.widgets.envelope import envelope as envelope
from kerasllm_widget.widgets.envelope import new_id as new_id

PROTOCOL_VERSION = 1

# Front end -> kernel.
CHAT_SEND = "chat.send"  # {text}
CHAT_REGENERATE = "chat.regenerate"  # {}
CHAT_EDIT = "chat.edit"  # {message_id, text}: replace a user turn and everything after it
CHAT_CANCEL = "chat.cancel"  # {}: stop the reply being generated and drop queued sends
CHAT_CLEAR = "chat.clear"  # {}: start a new conversation
CHAT_SYNC = "chat.sync"  # {}: ask for a snapshot of the reply being generated
# {message_id, token_index, token_id | None, text | None}: continue a reply from one of its tokens
CHAT_BRANCH = "chat.branch"
CHAT_SWITCH = "chat.switch"  # {message_id, index}: show another sibling of a message
CHAT_EXPORT_TREE = "chat.export_tree"  # {}: ask for the conversation tree (the JSON export)
CHAT_GET_TOKENS = "chat.get_tokens"  # {message_id}: ask for a reply's token records

# Kernel -> front end.
CHAT_TOKEN = "chat.token"  # {reply_id, tokens: [TokenEvent dicts]}
CHAT_DONE = "chat.done"  # {reply_id, stop_reason, text, notice, stats}
CHAT_ERROR = "chat.error"  # {reply_id | None, code, message}
CHAT_SNAPSHOT = "chat.snapshot"  # {reply_id | None, text, count, tokens}
CHAT_TREE = "chat.tree"  # {document: ChatState.to_json() | None}
CHAT_TOKENS = "chat.tokens"  # {reply_id, tokens: [TokenEvent dicts]}: a finished reply's tokens

REQUEST_KINDS = frozenset(
    {CHAT_SEND, CHAT_REGENERATE, CHAT_EDIT, CHAT_CANCEL, CHAT_CLEAR, CHAT_SYNC}
    | {CHAT_BRANCH, CHAT_SWITCH, CHAT_EXPORT_TREE, CHAT_GET_TOKENS}
)
RESPONSE_KINDS = frozenset(
    {CHAT_TOKEN, CHAT_DONE, CHAT_ERROR, CHAT_SNAPSHOT, CHAT_TREE, CHAT_TOKENS}
)

# Error codes of `chat.error`. Only "generation" errors are also written into the transcript.
ERROR_BAD_REQUEST = "bad_request"
ERROR_NOT_READY = "not_ready"
ERROR_NOTHING_TO_DO = "nothing_to_do"
ERROR_GENERATION = "generation"
ERROR_LOAD = "load"

# Fields each request carries, with their types, besides kind and id.
_REQUEST_FIELDS: dict[str, dict[str, _envelope.FieldTypes]] = {
    CHAT_SEND: {"text": (str,)},
    CHAT_REGENERATE: {},
    CHAT_EDIT: {"message_id": (str,), "text": (str,)},
    CHAT_CANCEL: {},
    CHAT_CLEAR: {},
    CHAT_SYNC: {},
    CHAT_BRANCH: {
        "message_id": (str,),
        "token_index": (int,),
        "token_id": (int, type(None)),
        "text": (str, type(None)),
    },
    CHAT_SWITCH: {"message_id": (str,), "index": (int,)},
    CHAT_EXPORT_TREE: {},
    CHAT_GET_TOKENS: {"message_id": (str,)},
}


def parse_request(content: Any) -> Request:
    """Checks a custom message from the front end and returns it as a `Request`.

    Raises `ProtocolError` naming what is wrong, so that the widget can answer with a
    ``chat.error`` rather than fail silently.

    Example:
        >>> parse_request({"kind": "chat.edit", "id": "v1", "message_id": "u2", "text": "Hi"}).fields
        {'message_id': 'u2', 'text': 'Hi'}
    """
    return _envelope.parse_request(content, _REQUEST_FIELDS)


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
