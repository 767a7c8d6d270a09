"""The envelope every widget message travels in, ``{"kind", "id", ...fields}``, defined once.

The chat (`protocol`) and the inspectors (`inspect_protocol`) each name their own kinds and
fields; what they share lives here: the envelope, `ProtocolError`, the parsed `Request`, request
ids, the checking of a request's fields, and JSON-safe numbers. Mirrored by
``js/shared/envelope.ts``; ``tests/test_envelope.py`` checks that both sides agree.

A kind is ``"<namespace>.<name>"`` (`KIND_PATTERN`): the namespace says which protocol a message
belongs to, so a widget hosting the chat and the inspectors routes by it. ``id`` names the request
a message belongs to: chosen by the view that sent it, or by the kernel (`new_id`) for a request
made from Python; ``""`` for a message that answers no request (a progress report).

>>> envelope("chat.error", "v1-3", code="bad_request")
{'kind': 'chat.error', 'id': 'v1-3', 'code': 'bad_request'}
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENVELOPE_KEYS",
    "KIND_PATTERN",
    "FieldTypes",
    "ProtocolError",
    "Request",
    "envelope",
    "finite",
    "new_id",
    "parse_request",
    "request_id_of",
]

# The keys every message has, in the order they are written.
ENVELOPE_KEYS = ("kind", "id")
# What a kind looks like: a namespace, a dot, a name.
KIND_PATTERN = r"^[a-z]+\.[a-z_]+$"

# The JSON types a field accepts; ``type(None)`` among them makes the field optional (absent or
# null). A bool is accepted only where ``bool`` is listed: JSON has one number type, and ``True``
# is not a layer index.
FieldTypes = tuple[type, ...]


class ProtocolError(ValueError):
    """A message from the front end that does not follow the protocol."""


@dataclass(frozen=True)
class Request:
    """A checked request from the front end: its kind, id, and the fields its kind declares.

    Example:
        >>> Request("chat.send", "v1", {"text": "hi"}).fields["text"]
        'hi'
    """

    kind: str
    id: str
    fields: dict[str, Any]


def envelope(kind: str, id: str, **fields: Any) -> dict[str, Any]:
    """The dict sent as one custom message.

    Example:
        >>> envelope("tokens.result", "i1-2", tables=[])
        {'kind': 'tokens.result', 'id': 'i1-2', 'tables': []}
    """
    return {"kind": kind, "id": id, **fields}


def parse_request(content: Any, fields: Mapping[str, Mapping[str, FieldTypes]]) -> Request:
    """Checks a custom message against ``fields`` (kind -> field name -> accepted types) and
    returns it as a `Request` holding the declared fields only (absent optional ones as None).

    Raises `ProtocolError` naming what is wrong, so that the widget answers with an error message
    rather than failing silently. Checks beyond types stay with each protocol.

    Example:
        >>> parse_request({"kind": "chat.send", "id": "v1", "text": "hi"},
        ...               {"chat.send": {"text": (str,)}})
        Request(kind='chat.send', id='v1', fields={'text': 'hi'})
    """
    if not isinstance(content, dict):
        raise ProtocolError(f"expected a message object, got {type(content).__name__}")
    kind, request_id = content.get("kind"), content.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise ProtocolError("message has no string 'id'")
    if not isinstance(kind, str) or kind not in fields:
        raise ProtocolError(f"unknown message kind {kind!r}")
    values: dict[str, Any] = {}
    for name, types in fields[kind].items():
        value = content.get(name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ProtocolError(f"{kind} needs a field {name!r} of type {names}")
        values[name] = value
    return Request(kind, request_id, values)


def request_id_of(content: Any) -> str:
    """The id to answer a message with, even one that failed its checks ("" if it has none)."""
    request_id = content.get("id") if isinstance(content, dict) else None
    return request_id if isinstance(request_id, str) else ""


_counter = itertools.count(1)
_session = os.urandom(3).hex()


def new_id(prefix: str = "k") -> str:
    """An id unique within this kernel, for requests made from Python and transcript entries.

    Example:
        >>> new_id("u").startswith("u")
        True
    """
    return f"{prefix}{_session}-{next(_counter)}"


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity (Jupyter's serializer refuses them): those become None.

    Example:
        >>> finite(float("nan")), finite(0.5)
        (None, 0.5)
    """
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
