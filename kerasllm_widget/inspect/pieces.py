"""Readable text for single token ids: what a chip, a bar label or a table cell shows."""

from __future__ import annotations

# Whitespace gets a visible mark so that " the" and "the" differ on screen (as tokenize_pieces does).
_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})


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


def piece(tokenizer, token_id: int) -> str:
    """The readable piece of one id: the token's own spelling for special tokens.

    Example:
        >>> piece(tokenizer, 9906)  # doctest: +SKIP
        'Hello'
    """
    token_id = int(token_id)
    if token_id in tokenizer.special_token_ids:
        return tokenizer.id_to_token(token_id)
    return readable_bytes(tokenizer.token_bytes(token_id))


def pieces(tokenizer, token_ids) -> list[str]:
    """`piece` for each id of a sequence.

    Example:
        >>> pieces(tokenizer, [9906, 1917])  # doctest: +SKIP
        ['Hello', '␣world']
    """
    return [piece(tokenizer, i) for i in token_ids]
