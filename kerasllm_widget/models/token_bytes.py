"""The bytes a token stands for, and how the inspectors show them.

A vocabulary string is not the text it stands for: byte-level vocabularies (Llama 3, SmolLM2)
spell bytes in GPT-2's alphabet (``"ĠHello"`` is ``b" Hello"``, see `checkpoints.byte_level`),
sentencepiece ones write spaces as ``"▁"`` and unknown bytes as ``"<0xF0>"``. `token_string_bytes`
undoes either spelling; `readable_bytes` turns bytes into a label with visible whitespace, which
still reads when a token holds only part of a character.
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer

from kerasllm_widget.checkpoints.byte_level import byte_level_bytes

__all__ = ["is_byte_level", "readable_bytes", "token_string_bytes"]

# How whitespace is shown in token pieces: a visible mark, so that " the" and "the" differ on screen.
_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SENTENCEPIECE_SPACE = "▁"


def readable_bytes(data: bytes) -> str:
    """Bytes as text with visible whitespace; bytes that are not part of a whole UTF-8 character
    are shown as ``<0xF0>`` so a token holding half an emoji still has a label.

    Example:
        >>> readable_bytes(b" Hello\\n"), readable_bytes("🙂".encode()[:2])
        ('␣Hello↵', '<0xF0><0x9F>')
    """
    text = data.decode("utf-8", errors="surrogateescape")
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, escaped by surrogateescape
            out.append(f"<0x{code - 0xDC00:02X}>")
        else:
            out.append(char)
    return "".join(out).translate(_VISIBLE_WHITESPACE)


def is_byte_level(backend: Tokenizer) -> bool:
    """Whether a tokenizer decodes GPT-2-style byte-level tokens (its decoder is ``ByteLevel``).

    Example:
        >>> is_byte_level(Tokenizer.from_file("tokenizer.json"))  # doctest: +SKIP
        True
    """
    decoder = backend.decoder
    state = decoder.__getstate__() if decoder is not None else b""
    return b'"ByteLevel"' in state


def token_string_bytes(token: str, *, byte_level: bool) -> bytes:
    """The bytes an ordinary (not special) vocabulary string stands for, in a byte-level
    vocabulary (``byte_level``) or a sentencepiece one.

    Example:
        >>> token_string_bytes("ĠHello", byte_level=True), token_string_bytes("▁Hi", byte_level=False)
        (b' Hello', b' Hi')
        >>> token_string_bytes("<0xF0>", byte_level=False)
        b'\\xf0'
    """
    if byte_level:
        data = byte_level_bytes(token)
        return token.encode("utf-8") if data is None else data  # None: an added token's own text
    match = _BYTE_FALLBACK.match(token)
    if match:
        return bytes([int(match.group(1), 16)])
    return token.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")
