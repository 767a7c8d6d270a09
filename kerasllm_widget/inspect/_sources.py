"""Finding the backbone, the tokenizer and the token ids behind whatever the user hands an inspector.

Inspectors accept a `Llama3CausalLM`, a bare `Llama3Backbone`, a tokenizer, a preprocessor or a
preset name; these helpers look only at public attributes, so they work on any object with the
keras_hub shape (``model.backbone``, ``model.preprocessor.tokenizer``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def backbone_of(model: Any):
    """The `Llama3Backbone` of a causal LM, or the object itself if it already is a backbone.

    Example:
        >>> backbone_of(model) is model.backbone  # doctest: +SKIP
        True
    """
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        return backbone
    if hasattr(model, "transformer_layers") and hasattr(model, "token_embedding"):
        return model
    raise TypeError(
        f"expected a Llama3CausalLM or a Llama3Backbone, got {type(model).__name__}; "
        "load one with Llama3CausalLM.from_preset(...)"
    )


def tokenizer_of(source: Any):
    """The tokenizer of a model, preprocessor or chat state; a tokenizer is returned as is; a
    string is loaded as a preset's tokenizer.

    Example:
        >>> tokenizer_of("smollm2-135m-instruct")("Hello")  # doctest: +SKIP
        array([19556], dtype=int32)
    """
    if isinstance(source, str):
        from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

        return Llama3Tokenizer.from_preset(source)
    if hasattr(source, "tokenize_pieces"):
        return source
    for path in (
        ("preprocessor", "tokenizer"),
        ("tokenizer",),
        ("model", "preprocessor", "tokenizer"),
    ):
        found = source
        for name in path:
            found = getattr(found, name, None)
            if found is None:
                break
        if found is not None and hasattr(found, "tokenize_pieces"):
            return found
    raise TypeError(
        f"no tokenizer found on {type(source).__name__}: pass a Llama3Tokenizer, a model with a "
        "preprocessor, or a preset name"
    )


def preprocessor_of(source: Any):
    """The `Llama3CausalLMPreprocessor` of a model; a preprocessor is returned as is; a tokenizer
    (or a preset name) gets a default preprocessor around it.

    Example:
        >>> preprocessor_of(model) is model.preprocessor  # doctest: +SKIP
        True
    """
    if hasattr(source, "sequence_length") and hasattr(source, "tokenizer") and callable(source):
        return source
    found = getattr(source, "preprocessor", None)
    if found is not None:
        return found
    try:
        tokenizer = tokenizer_of(source)
    except TypeError:
        raise TypeError(
            f"no preprocessor found on {type(source).__name__}: pass a Llama3CausalLM, a "
            "Llama3CausalLMPreprocessor or a tokenizer"
        ) from None
    from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor

    return Llama3CausalLMPreprocessor(tokenizer)


def one_sequence(token_ids: Any, vocabulary_size: int) -> np.ndarray:
    """One sequence of token ids as int32 ``[T]`` (a ``[1, T]`` batch is unwrapped), each
    checked against the vocabulary; anything else is refused with its shape.

    Example:
        >>> one_sequence([[1, 2, 3]], 32)
        array([1, 2, 3], dtype=int32)
    """
    from kerasllm_widget.generation import settings

    ids = np.asarray(token_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(
            f"token_ids has shape {tuple(ids.shape)}: pass one sequence of token ids [T], at "
            "least one token long."
        )
    return np.asarray(settings.check_token_ids(ids, vocabulary_size, "token_ids"), np.int32)


def text_ids(model: Any, text: str, add_start_token: bool = True) -> np.ndarray:
    """The token ids of ``text`` as the model reads it: int32 ``[T]``, with the start token
    first where the tokenizer asks for one (as the preprocessor does).

    Example:
        >>> text_ids(model, "Hello")  # doctest: +SKIP
        array([128000, 9906], dtype=int32)
    """
    tokenizer = tokenizer_of(model)
    ids = [int(i) for i in tokenizer(text)]
    start = tokenizer.start_token_id
    wants_start = add_start_token and tokenizer.add_bos and start is not None
    if wants_start and (not ids or ids[0] != start):
        ids = [int(start), *ids]
    return np.asarray(ids, dtype=np.int32)
