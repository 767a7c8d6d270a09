"""The Cache view's messages: the key/value cache of the chat, asked for and answered.

Mirrored by ``js/kv_cache/protocol.ts`` (``tests/test_kv_cache.py`` checks both list the same
kinds). Messages use the shared envelope (`kerasllm_widget.widgets.envelope`); the per-slot arrays
(token ids, message index, template flag, source) travel as binary buffers described by
``{dtype, shape, buffer}`` headers (`inspect_protocol.pack_arrays`).

>>> parse_request({"kind": "cache.request", "id": "c1"}).kind
'cache.request'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasllm_widget.widgets import envelope as _envelope
from kerasllm_widget.widgets.envelope import ProtocolError, Request
from kerasllm_widget.widgets.envelope import envelope as envelope
from kerasllm_widget.widgets.inspect_protocol import pack_arrays

__all__ = [
    "CACHE_ERROR",
    "CACHE_REQUEST",
    "CACHE_RESULT",
    "NAMESPACE",
    "REQUEST_KINDS",
    "RESPONSE_KINDS",
    "ProtocolError",
    "cache_result",
    "envelope",
    "parse_request",
]

NAMESPACE = "cache."
# Front end -> kernel.
CACHE_REQUEST = "cache.request"  # {}: the cache of the chat now
# Kernel -> front end.
# {cache: KvCache.to_dict(), arrays: {token_ids, message, template, source}} + 4 buffers
CACHE_RESULT = "cache.result"
CACHE_ERROR = "cache.error"  # {code, message}

REQUEST_KINDS = frozenset({CACHE_REQUEST})
RESPONSE_KINDS = frozenset({CACHE_RESULT, CACHE_ERROR})

ERROR_BAD_REQUEST = "bad_request"
ERROR_NOT_READY = "not_ready"  # the model is still loading
ERROR_FAILED = "failed"

_FIELDS: dict[str, dict[str, _envelope.FieldTypes]] = {CACHE_REQUEST: {}}


def is_cache_message(content: Any) -> bool:
    """Whether a custom message belongs to the Cache view."""
    return isinstance(content, dict) and str(content.get("kind", "")).startswith(NAMESPACE)


def parse_request(content: Any) -> Request:
    """Checks a Cache view request; raises `ProtocolError` naming what is wrong."""
    return _envelope.parse_request(content, _FIELDS)


def cache_result(request_id: str, cache: Any) -> tuple[dict, list]:
    """The ``cache.result`` message and its buffers for a `KvCache`.

    Example:
        >>> message, buffers = cache_result("c1", inspect.kv_cache(chat))  # doctest: +SKIP
    """
    headers, buffers = pack_arrays(
        {
            "token_ids": cache.token_ids.astype(np.int32),
            "message": cache.message.astype(np.int32),
            "template": cache.template.astype(np.uint8),
            "source": cache.source.astype(np.uint8),
        }
    )
    return envelope(CACHE_RESULT, request_id, cache=cache.to_dict(), arrays=headers), buffers
