"""Readable text for single token ids: what a chip, a bar label or a table cell shows."""

from __future__ import annotations

from kerasllm_widget.models.token_bytes import readable_bytes

__all__ = ["piece", "pieces", "readable_bytes"]


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
