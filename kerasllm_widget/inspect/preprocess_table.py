"""What the preprocessor feeds the model, as a table: ids, padding mask, labels, sample weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerasllm_widget.inspect._sources import preprocessor_of
from kerasllm_widget.inspect.pieces import pieces as readable_pieces

# What each cell is, for highlighting: the start token, the end token, padding, another special
# token (a chat header), or a token of the text.
START, END, PAD, SPECIAL, TEXT = "start", "end", "pad", "special", "text"


@dataclass
class PreprocessTable:
    """``preprocessor(texts, sequence_length=N)`` laid out as rows of a table (always ``[B, N]``)."""

    texts: list[str]
    sequence_length: int
    token_ids: np.ndarray  # [B, N] int32
    padding_mask: np.ndarray  # [B, N] bool
    labels: np.ndarray  # [B, N] int32: token_ids shifted left by one
    sample_weight: np.ndarray  # [B, N]
    token_pieces: list[list[str]]
    label_pieces: list[list[str]]
    token_kinds: list[list[str]]
    label_kinds: list[list[str]]
    truncated: list[bool]  # the text did not fit and was cut

    def to_dict(self) -> dict:
        """JSON-ready rows for the PreprocessorInspector's front end."""
        return {
            "sequence_length": self.sequence_length,
            "rows": [
                {
                    "text": self.texts[b],
                    "token_ids": self.token_ids[b].tolist(),
                    "padding_mask": self.padding_mask[b].astype(bool).tolist(),
                    "labels": self.labels[b].tolist(),
                    "sample_weight": [float(w) for w in self.sample_weight[b]],
                    "token_pieces": self.token_pieces[b],
                    "label_pieces": self.label_pieces[b],
                    "token_kinds": self.token_kinds[b],
                    "label_kinds": self.label_kinds[b],
                    "truncated": self.truncated[b],
                }
                for b in range(len(self.texts))
            ],
        }


def _kinds(ids: np.ndarray, mask: np.ndarray, tokenizer) -> list[str]:
    start, end = tokenizer.start_token_id, tokenizer.end_token_id
    special = tokenizer.special_token_ids
    out = []
    for i, (token, real) in enumerate(zip(ids.tolist(), mask.tolist(), strict=True)):
        if not real:
            out.append(PAD)
        elif i == 0 and token == start:
            out.append(START)
        elif token == end:
            out.append(END)
        elif token in special:
            out.append(SPECIAL)
        else:
            out.append(TEXT)
    return out


def preprocess(model_or_preprocessor, texts, sequence_length: int | None = None) -> PreprocessTable:
    """Runs the causal-LM preprocessor on one text or a batch and describes every cell.

    Example:
        >>> table = preprocess(model, ["Hello", "Hi!"], sequence_length=6)  # doctest: +SKIP
        >>> table.token_ids[0].tolist(), table.token_kinds[0]  # doctest: +SKIP
        ([128000, 9906, 128009, 0, 0, 0], ['start', 'text', 'end', 'pad', 'pad', 'pad'])
    """
    preprocessor = preprocessor_of(model_or_preprocessor)
    tokenizer = preprocessor.tokenizer
    batch = [texts] if isinstance(texts, str) else [str(t) for t in texts]
    if not batch:
        raise ValueError("preprocess needs at least one text")
    length = preprocessor.sequence_length if sequence_length is None else int(sequence_length)
    x, labels, sample_weight = preprocessor(batch, sequence_length=length)
    token_ids = np.asarray(x["token_ids"], dtype=np.int32)
    padding_mask = np.asarray(x["padding_mask"], dtype=bool)
    labels = np.asarray(labels, dtype=np.int32)
    sample_weight = np.asarray(sample_weight)
    # The labels row is the ids row shifted by one, so its mask is the padding mask shifted too,
    # with the last cell real only if the packed sequence ran past the inputs.
    label_mask = np.asarray(sample_weight, dtype=bool) | np.concatenate(
        [padding_mask[:, 1:], np.zeros((len(batch), 1), bool)], axis=1
    )
    # The packed sequence is inputs plus one label: a text is cut when it needs more than that.
    start_id, end_id = tokenizer.start_token_id, tokenizer.end_token_id
    extra = int(preprocessor.add_start_token and tokenizer.add_bos and start_id is not None)
    extra += int(preprocessor.add_end_token and end_id is not None)
    truncated = [len(ids) + extra > length + 1 for ids in tokenizer(batch)]
    return PreprocessTable(
        texts=batch,
        sequence_length=length,
        token_ids=token_ids,
        padding_mask=padding_mask,
        labels=labels,
        sample_weight=sample_weight,
        token_pieces=[readable_pieces(tokenizer, row) for row in token_ids],
        label_pieces=[readable_pieces(tokenizer, row) for row in labels],
        token_kinds=[
            _kinds(ids, m, tokenizer) for ids, m in zip(token_ids, padding_mask, strict=True)
        ],
        label_kinds=[_kinds(ids, m, tokenizer) for ids, m in zip(labels, label_mask, strict=True)],
        truncated=truncated,
    )
