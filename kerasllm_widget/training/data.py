"""Text in, batches out: what lets ``model.fit(["string", ...])`` run on Keras' trainer without
TensorFlow.

A `TextDataset` is a `keras.utils.PyDataset` over strings or chat conversations. Each batch goes
through the model's preprocessor, which gives ``({"token_ids", "padding_mask"}, labels,
sample_weight)``. Two choices keep the compiled step count small and the batches cheap:

- batches are cut to the longest example in them, rounded up to a power of two (at least 16, at
  most the preprocessor's ``sequence_length``), so a handful of short strings does not pay for
  1024 padded positions, and XLA compiles one step per length bucket, not per batch;
- a short last batch is filled with all-padding rows of zero weight, so every training step has
  the same batch size (no recompilation, and the batch divides evenly over data-parallel devices).
  Those rows add nothing to the loss or the metrics.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

__all__ = ["TextDataset", "as_keras_data", "is_text_input", "peek_text_stream"]

DEFAULT_BATCH_SIZE = 8
_MIN_BUCKET = 16


def _is_conversation(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(m, Mapping) and "role" in m for m in value)
    )


def _is_example(value: Any) -> bool:
    return isinstance(value, (str, bytes)) or _is_conversation(value)


def is_text_input(x: Any) -> bool:
    """Whether ``x`` is raw text for the preprocessor (not already token ids).

    Example:
        >>> is_text_input(["Hello", "Hi!"]), is_text_input({"token_ids": np.zeros((1, 4))})
        (True, False)
    """
    if x is None or isinstance(x, Mapping) or isinstance(x, keras.utils.PyDataset):
        return False
    if _is_example(x):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in ("U", "S", "O")
    if isinstance(x, (list, tuple)):
        return len(x) > 0 and all(_is_example(item) for item in x)
    return False


def peek_text_stream(x: Any) -> tuple[bool, Any]:
    """For a generator or other iterable: whether it yields text (examples or lists of them),
    and an iterator that still yields everything (the first item was read to find out).

    Example:
        >>> is_text, stream = peek_text_stream(iter(["Hello", "Hi!"]))
        >>> is_text, list(stream)
        (True, ['Hello', 'Hi!'])
    """
    if (
        x is None
        or isinstance(x, (Mapping, str, bytes, list, tuple, np.ndarray))
        or isinstance(x, keras.utils.PyDataset)
        or not isinstance(x, Iterable)
    ):
        return False, x
    iterator = iter(x)
    try:
        first = next(iterator)
    except StopIteration:
        return False, iter(())
    stream = itertools.chain([first], iterator)
    if isinstance(first, bytes) or _is_example(first):
        return True, stream
    if isinstance(first, np.ndarray) and first.dtype.kind in ("U", "S", "O"):
        return True, stream
    is_batch = isinstance(first, (list, tuple)) and len(first) > 0 and all(map(_is_example, first))
    return is_batch, stream


def _bucket(length: int, limit: int) -> int:
    return min(limit, max(_MIN_BUCKET, 1 << max(0, math.ceil(math.log2(max(length, 1))))))


def _trim(batch: tuple, length: int) -> tuple:
    features, labels, weights = batch
    return (
        {k: v[:, :length] for k, v in features.items()},
        labels[:, :length],
        weights[:, :length],
    )


def _pad_rows(batch: tuple, rows: int) -> tuple:
    """Appends all-padding rows of zero weight up to ``rows``."""
    features, labels, weights = batch
    missing = rows - labels.shape[0]
    if missing <= 0:
        return batch

    def pad(array: np.ndarray) -> np.ndarray:
        return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)])

    return ({k: pad(v) for k, v in features.items()}, pad(labels), pad(weights))


class TextDataset(keras.utils.PyDataset):
    """Strings or conversations, batched and preprocessed on the fly for `fit`/`evaluate`/`predict`.

    Args:
        examples: strings and/or conversations (lists of ``{"role", "content"}`` dicts).
        preprocessor: a `Llama3CausalLMPreprocessor` (its ``sequence_length`` caps the length).
        batch_size: examples per batch.
        sample_weight: optional per-example weights (multiplied into the token weights).
        shuffle: reshuffle the examples at the end of each epoch (seeded, reproducible).
        pad_last_batch: fill the last batch with zero-weight rows to ``batch_size``.
        fixed_length: pad every batch to one length (``predict`` concatenates batches, so they
            must agree); default: per-batch power-of-two buckets.
        seed: shuffling seed.

    Example:
        >>> data = TextDataset(["Hello", "Hi!"], model.preprocessor, batch_size=2)  # doctest: +SKIP
        >>> x, labels, weights = data[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        examples: Sequence[Any],
        preprocessor,
        batch_size: int = DEFAULT_BATCH_SIZE,
        sample_weight: Sequence[float] | None = None,
        shuffle: bool = False,
        pad_last_batch: bool = True,
        fixed_length: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if preprocessor is None:
            raise ValueError(
                "This model has no preprocessor, so it cannot read text. Load it with "
                "Llama3CausalLM.from_preset(...) or pass token ids: "
                "{'token_ids': int32[B, T], 'padding_mask': bool[B, T]}."
            )
        self.examples = list(examples)
        if not self.examples:
            raise ValueError("No training examples: the text dataset is empty.")
        self.preprocessor = preprocessor
        self.batch_size = int(batch_size)
        self.sample_weight = (
            None if sample_weight is None else np.asarray(sample_weight, np.float32)
        )
        if self.sample_weight is not None and len(self.sample_weight) != len(self.examples):
            raise ValueError(
                f"sample_weight has {len(self.sample_weight)} entries for "
                f"{len(self.examples)} examples."
            )
        self.shuffle = shuffle
        self.pad_last_batch = pad_last_batch
        self.fixed_length = fixed_length
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(self.examples))

    def __len__(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def __getitem__(self, index: int) -> tuple:
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        if len(rows) == 0:
            raise IndexError(index)
        examples = [self.examples[i] for i in rows]
        weights = None if self.sample_weight is None else self.sample_weight[rows]
        batch = self.preprocessor(examples, sample_weight=weights)
        features, labels, token_weights = batch
        batch = (features, labels, token_weights.astype(np.float32))
        limit = labels.shape[1]
        if self.fixed_length is not None:
            length = min(limit, self.fixed_length)
        else:
            length = _bucket(int(features["padding_mask"].sum(axis=1).max()), limit)
        batch = _trim(batch, length)
        if self.pad_last_batch:
            batch = _pad_rows(batch, self.batch_size)
        return batch

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._order = self._rng.permutation(len(self.examples))

    def longest_bucket(self) -> int:
        """The bucket length of the longest example (what ``predict`` pads every batch to)."""
        longest = 0
        for start in range(0, len(self.examples), self.batch_size):
            features, _, _ = self.preprocessor(self.examples[start : start + self.batch_size])
            longest = max(longest, int(features["padding_mask"].sum(axis=1).max()))
        return _bucket(longest, self.preprocessor.sequence_length)


def _text_batches(stream: Iterable[Any], preprocessor, batch_size: int) -> Iterator[tuple]:
    """Groups a stream of examples (or of batches of examples) into preprocessed batches."""
    pending: list[Any] = []
    for item in stream:
        if isinstance(item, np.ndarray):
            item = item.tolist()
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if _is_example(item):
            pending.append(item)
        else:  # the stream yields batches
            pending.extend(item)
        while len(pending) >= batch_size:
            chunk, pending = pending[:batch_size], pending[batch_size:]
            yield TextDataset(chunk, preprocessor, batch_size)[0]
    if pending:
        yield TextDataset(pending, preprocessor, batch_size)[0]


def as_keras_data(
    x: Any,
    preprocessor,
    batch_size: int | None = None,
    sample_weight: Any = None,
    shuffle: bool = False,
    for_predict: bool = False,
) -> Any:
    """Turns text input into something Keras' ``fit``/``evaluate``/``predict`` take.

    Strings, lists of strings or conversations and numpy string arrays become a `TextDataset`;
    other iterables (generators, streaming datasets) become a generator of preprocessed batches
    (one pass: give ``steps_per_epoch`` for more than one epoch).

    Example:
        >>> data = as_keras_data(["Hello", "Hi!"], model.preprocessor, batch_size=2)  # doctest: +SKIP
    """
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
    if _is_example(x):
        x = [x]
    if isinstance(x, np.ndarray):
        x = [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in x.ravel()]
    if isinstance(x, (list, tuple)):
        dataset = TextDataset(
            x,
            preprocessor,
            batch_size,
            sample_weight=sample_weight,
            shuffle=shuffle,
            pad_last_batch=not for_predict,
        )
        if for_predict:
            dataset.fixed_length = dataset.longest_bucket()
        return dataset
    if sample_weight is not None:
        raise ValueError("sample_weight goes with a list of examples; a stream cannot be weighted.")
    return _text_batches(x, preprocessor, batch_size)
