"""Finding the backbone and the tokenizer behind whatever object the user hands an inspector.

Inspectors accept a `Llama3CausalLM`, a bare `Llama3Backbone`, a tokenizer, a preprocessor or a
preset name; these helpers look only at public attributes, so they work on any object with the
keras_hub shape (``model.backbone``, ``model.preprocessor.tokenizer``).
"""

from __future__ import annotations

from typing import Any


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
