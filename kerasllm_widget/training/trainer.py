"""The glue between `Llama3CausalLM`'s ``fit``/``evaluate``/``predict`` and Keras' trainer.

Text goes through `data.as_keras_data`; token-id dicts, arrays and `keras.utils.PyDataset`s pass
through untouched, so everything Keras accepts still works.
"""

from __future__ import annotations

from typing import Any

from kerasllm_widget.training.data import as_keras_data, is_text_input, peek_text_stream

__all__ = ["prepare_inputs", "prepare_validation_data"]


def prepare_inputs(
    model,
    x: Any,
    y: Any = None,
    batch_size: int | None = None,
    sample_weight: Any = None,
    shuffle: bool = False,
    for_predict: bool = False,
) -> tuple[Any, Any, int | None, Any]:
    """Returns ``(x, y, batch_size, sample_weight)`` ready for ``keras.Model.fit`` and friends.

    Example:
        >>> x, y, batch_size, weights = prepare_inputs(model, ["Hello", "Hi!"])  # doctest: +SKIP
    """
    if isinstance(x, (list, tuple)) and len(x) == 0:
        verb = "predict on" if for_predict else "train or evaluate on"
        raise ValueError(
            f"x is an empty list: there are no training examples to {verb}. Pass strings, "
            "conversations ([{'role': ..., 'content': ...}, ...]) or preprocessed arrays."
        )
    if not is_text_input(x):
        is_stream, x = peek_text_stream(x)
        if not is_stream:
            return x, y, batch_size, sample_weight
    if y is not None:
        raise ValueError(
            "Text inputs are their own labels (each token predicts the next), so y must be None. "
            "To train on answers only, pass conversations: [{'role': 'user', ...}, "
            "{'role': 'assistant', ...}] weight only the assistant's tokens."
        )
    data = as_keras_data(
        x,
        model.preprocessor,
        batch_size,
        sample_weight=sample_weight,
        shuffle=shuffle,
        for_predict=for_predict,
    )
    # The dataset batches itself: Keras must not be given a batch size or weights as well.
    return data, None, None, None


def prepare_validation_data(model, validation_data: Any, batch_size: int | None = None) -> Any:
    """Text validation data -> a `TextDataset`; anything else unchanged."""
    if validation_data is None:
        return None
    if not is_text_input(validation_data):
        is_stream, validation_data = peek_text_stream(validation_data)
        if not is_stream:
            return validation_data
    return as_keras_data(validation_data, model.preprocessor, batch_size)
