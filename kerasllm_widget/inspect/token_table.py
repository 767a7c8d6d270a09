"""How text becomes token ids: pieces, offsets, bytes and counts, as plain data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerasllm_widget.inspect._sources import tokenizer_of


@dataclass
class TokenTable:
    """The tokens of one text.

    ``pieces`` holds one dict per token: ``id``, ``piece`` (readable, ``"␣world"``), ``text`` (the
    decoded piece, U+FFFD for a partial character), ``bytes`` (list of ints), ``is_special``,
    ``start``/``end`` (character offsets into ``text``).
    """

    text: str
    pieces: list[dict]

    @property
    def ids(self) -> np.ndarray:
        return np.asarray([p["id"] for p in self.pieces], dtype=np.int32)

    @property
    def num_tokens(self) -> int:
        return len(self.pieces)

    @property
    def num_chars(self) -> int:
        return len(self.text)

    @property
    def num_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    def to_dict(self) -> dict:
        """JSON-ready: what the TokenInspector's front end draws."""
        return {
            "pieces": self.pieces,
            "num_tokens": self.num_tokens,
            "num_chars": self.num_chars,
            "num_bytes": self.num_bytes,
        }

    def __repr__(self) -> str:
        shown = " ".join(f"{p['piece']}[{p['id']}]" for p in self.pieces[:12])
        more = " ..." if self.num_tokens > 12 else ""
        return (
            f"TokenTable({self.num_tokens} tokens, {self.num_chars} chars, {self.num_bytes} bytes: "
            f"{shown}{more})"
        )


def tokens(tokenizer_or_model, text: str) -> TokenTable:
    """Tokenizes ``text`` and describes every token (no special tokens are added).

    Example:
        >>> table = tokens(tokenizer, "Hello world")  # doctest: +SKIP
        >>> table.ids.tolist(), [p["piece"] for p in table.pieces]  # doctest: +SKIP
        ([9906, 1917], ['Hello', '␣world'])
    """
    tokenizer = tokenizer_of(tokenizer_or_model)
    rows = []
    for p in tokenizer.tokenize_pieces(text):
        data = bytes(p["bytes"])
        rows.append(
            {
                "id": int(p["id"]),
                "piece": str(p["piece"]),
                "text": data.decode("utf-8", errors="replace"),
                "bytes": list(data),
                "is_special": bool(p["is_special"]),
                "start": int(p["start"]),
                "end": int(p["end"]),
            }
        )
    return TokenTable(text, rows)


def compare(tokenizer_a, tokenizer_b, text: str) -> dict:
    """Two tokenizers on the same text: both tables and their token counts side by side.

    Example:
        >>> compare(llama3, smollm2, "Tokenization")["num_tokens"]  # doctest: +SKIP
        [2, 3]
    """
    a, b = tokens(tokenizer_a, text), tokens(tokenizer_b, text)
    return {"tables": [a, b], "num_tokens": [a.num_tokens, b.num_tokens]}
