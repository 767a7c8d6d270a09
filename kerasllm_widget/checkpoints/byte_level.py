"""GPT-2's byte-level alphabet: the one table between bytes and the characters that spell them.

Byte-level BPE vocabularies (Llama 3, SmolLM2, GPT-2) spell every token in an alphabet of 256
printable characters, one per byte: ``"Ġ"`` is the space byte, ``"Ċ"`` the newline. The GGUF
reader spells a vocabulary in it when it rebuilds a ``tokenizer.json`` (`gguf_tokenizer`), and the
tokenizer reads it back to give the bytes a token stands for (`Llama3Tokenizer.token_bytes`).

It lives here, in `checkpoints`, because the tokenizer's layer (`models`) may import this one and
not the other way round.
"""

from __future__ import annotations

__all__ = ["BYTE_LEVEL_ALPHABET", "BYTE_TO_UNICODE", "UNICODE_TO_BYTE", "byte_level_bytes"]


def _bytes_to_unicode() -> dict[int, str]:
    # Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, soft hyphen)
    # are moved past 255 in byte order, as GPT-2's `bytes_to_unicode` does.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


# Read-only by convention: both directions are shared by every tokenizer in the process.
BYTE_TO_UNICODE: dict[int, str] = _bytes_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {char: byte for byte, char in BYTE_TO_UNICODE.items()}
BYTE_LEVEL_ALPHABET: frozenset[str] = frozenset(BYTE_TO_UNICODE.values())


def byte_level_bytes(token: str) -> bytes | None:
    """The bytes a token spelled in the byte-level alphabet stands for; None for a token with
    characters outside it (an added token stored as its own text).

    Example:
        >>> byte_level_bytes("ĠHello"), byte_level_bytes("<|eot_id|>"), byte_level_bytes("中文")
        (b' Hello', b'<|eot_id|>', None)
    """
    try:
        return bytes(UNICODE_TO_BYTE[char] for char in token)
    except KeyError:
        return None
