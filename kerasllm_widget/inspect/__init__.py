"""Numpy-level data behind the inspector views, usable from plain code too.

Example:
    >>> from kerasllm_widget import inspect
    >>> inspect.tokens(model, "Hello").ids  # doctest: +SKIP
    array([9906], dtype=int32)
    >>> inspect.attention(model, ids, layer=0, head=0).shape  # doctest: +SKIP
    (12, 12)
    >>> inspect.logit_lens(model, ids, top_k=5).top_ids.shape  # doctest: +SKIP
    (30, 12, 5)
    >>> inspect.attribution(model, ids, target_position=11).shape  # doctest: +SKIP
    (11,)
"""

from __future__ import annotations

import importlib

# Names are imported on first use: the widgets import this package at start-up, and the
# attention code pulls in Keras and JAX, which a panel that is still loading its model can wait for.
_EXPORTS = {
    "AttentionMaps": "attention_maps",
    "AttentionOverview": "attention_maps",
    "attention": "attention_maps",
    "ATTRIBUTION_METHODS": "attributions",
    "attribution": "attributions",
    "NextTokenDistribution": "distributions",
    "SequenceScores": "distributions",
    "entropy": "distributions",
    "next_token": "distributions",
    "score": "distributions",
    "PreprocessTable": "preprocess_table",
    "preprocess": "preprocess_table",
    "QuantizedArray": "quantization",
    "block_max": "quantization",
    "dequantize": "quantization",
    "downsample_max": "quantization",
    "quantize": "quantization",
    "KvCache": "key_value_cache",
    "kv_cache": "key_value_cache",
    "LogitLens": "lens",
    "logit_lens": "lens",
    "Step": "stepping",
    "StepSession": "stepping",
    "Edit": "hooks",
    "causal_inputs": "hooks",
    "compilations": "hooks",
    "hook_points": "hooks",
    "model_program": "hooks",
    "run_with_cache": "hooks",
    "run_with_hooks": "hooks",
    "ModelComparison": "steering",
    "compare_logits": "steering",
    "compare_models": "steering",
    "steering_vector": "steering",
    "TokenTable": "token_table",
    "compare": "token_table",
    "tokens": "token_table",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kerasllm_widget.inspect' has no attribute {name!r}")
    return getattr(importlib.import_module(f"kerasllm_widget.inspect.{module}"), name)


def __dir__() -> list[str]:
    return __all__
