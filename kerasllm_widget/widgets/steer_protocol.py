"""The Steering and Compare tabs' message protocol: kinds and fields, defined once.

Mirrored by ``js/shared/steer_protocol.ts`` (``tests/test_steering_panel.py`` checks both list the
same kinds). Messages use the shared envelope ``{"kind", "id", ...}`` (`envelope`); kinds are
namespaced ``steer.`` and ``compare.``. Arrays travel as binary buffers described by
``{dtype, shape, buffer}`` headers (`inspect_protocol.pack_arrays`), never as JSON lists.

>>> envelope(STEER_ERROR, "s1-2", request_kind="steer.ask", code="failed", message="x")["kind"]
'steer.error'
"""

from __future__ import annotations

from typing import Any

from kerasllm_widget.widgets import envelope as _envelope
from kerasllm_widget.widgets.envelope import ProtocolError, Request
from kerasllm_widget.widgets.envelope import envelope as envelope

__all__ = ["ProtocolError", "Request", "envelope", "is_steer_message", "parse_request"]

PROTOCOL_VERSION = 1

# Front end -> kernel.
STEER_OPEN = "steer.open"  # {}: answers steer.info
STEER_COMPUTE = "steer.compute"  # {positive: [str], negative: [str], layer}: answers steer.vector
# {question, strength, max_new_tokens?}: streams steer.reply for "plain" then "steered"
STEER_ASK = "steer.ask"
STEER_APPLY = "steer.apply"  # {strength | null}: the chat's replies steered (null: off)
STEER_CANCEL = "steer.cancel"  # {}: stops the computation of this tab now running
COMPARE_REQUEST = "compare.request"  # {}: the conversation scored under both models
COMPARE_CONTINUE = "compare.continue"  # {sequence_id, position, max_new_tokens?}

# Kernel -> front end.
STEER_INFO = "steer.info"  # {num_layers, layer, vector: {layer, norm, ...} | null, applied}
STEER_VECTOR = "steer.vector"  # {layer, norm, positive, negative}
STEER_REPLY = "steer.reply"  # {which: "plain" | "steered", text, done, stop_reason}
STEER_ERROR = "steer.error"  # {request_kind, code, message}
# {sequence_id, names, pieces, roles, labels, arrays} + buffers: token_ids, logprobs_a/_b, kl,
# top_ids_a/_b, top_probs_a/_b (see `inspect.ModelComparison`)
COMPARE_RESULT = "compare.result"
COMPARE_CONTINUATION = "compare.continuation"  # {sequence_id, position, text, done}

REPLY_SIDES = ("plain", "steered")

REQUEST_KINDS = frozenset(
    {
        STEER_OPEN,
        STEER_COMPUTE,
        STEER_ASK,
        STEER_APPLY,
        STEER_CANCEL,
        COMPARE_REQUEST,
        COMPARE_CONTINUE,
    }
)
RESPONSE_KINDS = frozenset(
    {STEER_INFO, STEER_VECTOR, STEER_REPLY, STEER_ERROR, COMPARE_RESULT, COMPARE_CONTINUATION}
)
NAMESPACES = ("steer.", "compare.")

# Error codes of steer.error.
ERROR_BAD_REQUEST = "bad_request"
ERROR_NOT_READY = "not_ready"  # no model yet, no vector yet, or nothing to compare
ERROR_CANCELLED = "cancelled"  # stopped by the user
ERROR_FAILED = "failed"  # the computation raised

_NONE = type(None)
_NUMBER = (int, float)
_FIELDS: dict[str, dict[str, _envelope.FieldTypes]] = {
    STEER_OPEN: {},
    STEER_COMPUTE: {"positive": (list,), "negative": (list,), "layer": (int,)},
    STEER_ASK: {"question": (str,), "strength": _NUMBER, "max_new_tokens": (int, _NONE)},
    STEER_APPLY: {"strength": (*_NUMBER, _NONE)},
    STEER_CANCEL: {},
    COMPARE_REQUEST: {},
    COMPARE_CONTINUE: {
        "sequence_id": (str,),
        "position": (int,),
        "max_new_tokens": (int, _NONE),
    },
}


def is_steer_message(content: Any) -> bool:
    """Whether a custom message belongs to the Steering or Compare tab.

    Example:
        >>> is_steer_message({"kind": "compare.request", "id": "a"}), is_steer_message({"kind": "chat.send"})
        (True, False)
    """
    return isinstance(content, dict) and str(content.get("kind", "")).startswith(NAMESPACES)


def parse_request(content: Any) -> Request:
    """Checks a Steering/Compare request and returns it; raises `ProtocolError` naming what is wrong.

    Example:
        >>> parse_request({"kind": "steer.compute", "id": "a", "positive": ["yes"],
        ...                "negative": ["no"], "layer": 3}).fields["layer"]
        3
    """
    request = _envelope.parse_request(content, _FIELDS)
    if request.kind == STEER_COMPUTE:
        for side in ("positive", "negative"):
            prompts = request.fields[side]
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise ProtocolError(
                    f"steer.compute needs '{side}' as a non-empty list of non-empty prompts"
                )
    if request.kind == STEER_ASK and not request.fields["question"].strip():
        raise ProtocolError("steer.ask needs a non-empty 'question'")
    return request
