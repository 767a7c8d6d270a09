"""The inspectors' message protocol: kinds, fields and binary arrays, defined once.

Mirrored by ``js/shared/inspect_protocol.ts`` (``tests/test_inspect_widgets.py`` checks both list
the same kinds). Messages use the envelope the chat's protocol uses too, ``{"kind", "id", ...}``
(`kerasllm_widget.widgets.envelope`, re-exported here); kinds are namespaced by view. Arrays travel as binary buffers: the JSON part names each array's
``{dtype, shape, buffer}`` (plus ``scale`` and ``gamma`` for quantised attention maps), and the
buffer list of the same message holds the bytes, little-endian, C order.

>>> envelope(INSPECT_ERROR, "v1-2", request_kind="attention.request", code="bad_request", message="x")["kind"]
'inspect.error'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasllm_widget.inspect.quantization import QuantizedArray
from kerasllm_widget.widgets import envelope as _envelope
from kerasllm_widget.widgets.envelope import ProtocolError, Request
from kerasllm_widget.widgets.envelope import envelope as envelope

PROTOCOL_VERSION = 1

# Front end -> kernel.
TOKENS_REQUEST = "tokens.request"  # {text: str | None (the conversation), compare: bool}
PREPROCESS_REQUEST = "preprocess.request"  # {texts: [str] | None, sequence_length: int}
ATTENTION_OPEN = "attention.open"  # {text: str | None}: which tokens; answers attention.sequence
# {sequence_id, layer, head: int | "mean", cells?: int, region?: [row0, row1, col0, col1]}:
# without cells or region the whole map; with cells the map shrunk to block maxima (at most about
# cells a side); with region the full-resolution codes of those query rows and key columns.
ATTENTION_REQUEST = "attention.request"
ATTENTION_OVERVIEW = "attention.overview"  # {sequence_id, size}: every layer's thumbnails
PROBABILITIES_REQUEST = "probabilities.request"  # {}: the conversation scored token by token
STEP_REQUEST = "step.request"  # {action, token_id?, text?}
LENS_REQUEST = "lens.request"  # {text: str | None (the conversation)}: answers lens.result
ATTRIBUTION_OPEN = (
    "attribution.open"  # {text: str | None}: which tokens; answers attribution.sequence
)
# {sequence_id, target_position, method, steps?}: scores of the tokens before target_position for
# the token there; answered by attribution.progress (integrated gradients, after each batch of
# steps) and then attribution.result, or inspect.error ("stopped", "superseded").
ATTRIBUTION_REQUEST = "attribution.request"
ATTRIBUTION_STOP = "attribution.stop"  # {}: stops the attribution running or waiting (no answer)

# Kernel -> front end.
TOKENS_RESULT = "tokens.result"  # {tables: [TokenTable], labels: [str]}
PREPROCESS_RESULT = "preprocess.result"  # {table}
ATTENTION_SEQUENCE = "attention.sequence"  # {sequence_id, pieces, roles, num_layers, num_heads}
# {sequence_id, layer, head, compute_s, block, region, array, row_max?} + 1 or 2 buffers: block is
# tokens per cell side (1: full resolution), region the [row0, row1, col0, col1] the codes cover
# (null: the whole map), row_max (with cells) the largest code of each query row at full resolution.
ATTENTION_RESULT = "attention.result"
ATTENTION_THUMBNAILS = "attention.thumbnails"  # {sequence_id, layer, num_layers, array} + 1 buffer
# {sequence_id, ready_layers, num_layers, reused_tokens}, id "": how far the forward pass has come
ATTENTION_PROGRESS = "attention.progress"
PROBABILITIES_RESULT = (
    "probabilities.result"  # {sequence_id, pieces, roles, labels, arrays} + buffers
)
STEP_STATE = "step.state"  # {prompt_tail, steps, distribution, proposal, finished, text}
# {sequence_id, pieces, roles, num_layers, top_k, compute_s, labels, arrays} + buffers: the
# logit lens, top-k probabilities and the next token's probability as float16, ids as int32.
LENS_RESULT = "lens.result"
LENS_PROGRESS = "lens.progress"  # {length, num_layers}, id "": a lens pass has started
# {sequence_id, pieces, roles, special: [bool], methods: [str], max_steps}
ATTRIBUTION_SEQUENCE = "attribution.sequence"
ATTRIBUTION_PROGRESS = "attribution.progress"  # {sequence_id, target_position, done, total}
# {sequence_id, target_position, target_id, method, steps, compute_s, scores} + 1 float32 buffer
ATTRIBUTION_RESULT = "attribution.result"
INSPECT_ERROR = "inspect.error"  # {request_kind, code, message}

STEP_ACTIONS = ("start", "propose", "accept", "choose", "undo", "reset", "finish")

REQUEST_KINDS = frozenset(
    {
        TOKENS_REQUEST,
        PREPROCESS_REQUEST,
        ATTENTION_OPEN,
        ATTENTION_REQUEST,
        ATTENTION_OVERVIEW,
        PROBABILITIES_REQUEST,
        STEP_REQUEST,
        LENS_REQUEST,
        ATTRIBUTION_OPEN,
        ATTRIBUTION_REQUEST,
        ATTRIBUTION_STOP,
    }
)
RESPONSE_KINDS = frozenset(
    {
        TOKENS_RESULT,
        PREPROCESS_RESULT,
        ATTENTION_SEQUENCE,
        ATTENTION_RESULT,
        ATTENTION_THUMBNAILS,
        ATTENTION_PROGRESS,
        PROBABILITIES_RESULT,
        STEP_STATE,
        LENS_RESULT,
        LENS_PROGRESS,
        ATTRIBUTION_SEQUENCE,
        ATTRIBUTION_PROGRESS,
        ATTRIBUTION_RESULT,
        INSPECT_ERROR,
    }
)
NAMESPACES = (
    "tokens.",
    "preprocess.",
    "attention.",
    "probabilities.",
    "step.",
    "lens.",
    "attribution.",
    "inspect.",
)

# Error codes of inspect.error.
ERROR_BAD_REQUEST = "bad_request"
ERROR_NOT_READY = "not_ready"  # no model yet, or nothing to inspect
ERROR_SUPERSEDED = "superseded"  # a newer request of the same kind replaced this one
ERROR_FAILED = "failed"  # the computation raised
ERROR_STOPPED = "stopped"  # the user stopped it (attribution.stop)

_NONE = type(None)
# Every field a request may carry, with its types (``None`` among them: it may be left out).
_FIELDS: dict[str, dict[str, _envelope.FieldTypes]] = {
    TOKENS_REQUEST: {"text": (str, _NONE), "compare": (bool, _NONE)},
    PREPROCESS_REQUEST: {"sequence_length": (int,), "texts": (list, _NONE)},
    ATTENTION_OPEN: {"text": (str, _NONE)},
    ATTENTION_REQUEST: {
        "sequence_id": (str,),
        "layer": (int,),
        "head": (int, str),
        "cells": (int, _NONE),
        "region": (list, _NONE),
    },
    ATTENTION_OVERVIEW: {"sequence_id": (str,), "size": (int,)},
    PROBABILITIES_REQUEST: {},
    STEP_REQUEST: {"action": (str,), "token_id": (int, _NONE), "text": (str, _NONE)},
    LENS_REQUEST: {"text": (str, _NONE)},
    ATTRIBUTION_OPEN: {"text": (str, _NONE)},
    ATTRIBUTION_REQUEST: {
        "sequence_id": (str,),
        "target_position": (int,),
        "method": (str,),
        "steps": (int, _NONE),
    },
    ATTRIBUTION_STOP: {},
}


def is_inspector_message(content: Any) -> bool:
    """Whether a custom message belongs to the inspectors (so a widget hosting several views can
    route it here and leave the rest to its own handler)."""
    return isinstance(content, dict) and str(content.get("kind", "")).startswith(NAMESPACES)


def parse_request(content: Any) -> Request:
    """Checks an inspector request and returns it; raises `ProtocolError` naming what is wrong.

    Example:
        >>> parse_request({"kind": "attention.request", "id": "a", "sequence_id": "s",
        ...                "layer": 0, "head": "mean"}).kind
        'attention.request'
    """
    request = _envelope.parse_request(content, _FIELDS)
    kind, fields = request.kind, request.fields
    if kind == ATTENTION_REQUEST and isinstance(fields["head"], str) and fields["head"] != "mean":
        raise ProtocolError("head must be a head index or 'mean'")
    if kind == ATTENTION_REQUEST:
        _check_attention_extent(fields)
    if kind == STEP_REQUEST and fields["action"] not in STEP_ACTIONS:
        raise ProtocolError(f"unknown step action {fields['action']!r}")
    if kind == PREPROCESS_REQUEST:
        texts = fields["texts"]
        if texts is not None and not all(isinstance(t, str) for t in texts):
            raise ProtocolError("preprocess.request needs 'texts' as a list of strings or null")
    return request


def _check_attention_extent(fields: dict) -> None:
    cells, region = fields["cells"], fields["region"]
    if cells is not None and cells < 1:
        raise ProtocolError("attention.request 'cells' must be a positive integer")
    if region is not None:
        if not (
            isinstance(region, list)
            and len(region) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in region)
            and 0 <= region[0] < region[1]
            and 0 <= region[2] < region[3]
        ):
            raise ProtocolError(
                "attention.request 'region' must be [row0, row1, col0, col1] with row0 < row1, col0 < col1"
            )


def pack_arrays(arrays: dict[str, np.ndarray], buffers: list | None = None) -> tuple[dict, list]:
    """Numpy arrays -> ``({name: {dtype, shape, buffer}}, buffers)`` for one message.

    Example:
        >>> headers, buffers = pack_arrays({"probs": np.ones(3, np.float32)})
        >>> headers["probs"], len(bytes(buffers[0]))
        ({'dtype': 'float32', 'shape': [3], 'buffer': 0}, 12)
    """
    buffers = [] if buffers is None else buffers
    headers = {}
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        headers[name] = {
            "dtype": array.dtype.name,
            "shape": list(array.shape),
            "buffer": len(buffers),
        }
        buffers.append(memoryview(array).cast("B"))
    return headers, buffers


def pack_quantized(quantized: QuantizedArray, buffers: list) -> dict:
    """A quantised map's header (``{dtype, shape, scale, gamma, buffer}``); appends its bytes."""
    header = {**quantized.header(), "buffer": len(buffers)}
    buffers.append(quantized.buffer())
    return header
