"""kerasllm_widget: meet a large language model inside a notebook.

>>> from kerasllm_widget import Llama3CausalLM
>>> model = Llama3CausalLM.from_preset("smollm2-135m-instruct")  # doctest: +SKIP
>>> model.generate("Hi there!", max_new_tokens=16)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from kerasllm_widget import _backend  # noqa: F401  (sets KERAS_BACKEND before keras loads)

__version__ = "0.1.0"

# Public names, imported on first use so that `import kerasllm_widget` stays cheap (no JAX
# start-up) until a model or widget is actually asked for.
_EXPORTS = {
    "Llama3Backbone": "kerasllm_widget.models.llama3_backbone",
    "Llama3Tokenizer": "kerasllm_widget.models.llama3_tokenizer",
    "Llama3CausalLMPreprocessor": "kerasllm_widget.models.llama3_causal_lm_preprocessor",
    "Llama3CausalLM": "kerasllm_widget.models.llama3_causal_lm",
    "ChatState": "kerasllm_widget.chat.chat_state",
    "ChatWidget": "kerasllm_widget.widgets.chat_widget",
    "TokenInspector": "kerasllm_widget.widgets.token_inspector",
    "PreprocessorInspector": "kerasllm_widget.widgets.preprocessor_inspector",
    "AttentionView": "kerasllm_widget.widgets.attention_view",
    "ProbabilitiesView": "kerasllm_widget.widgets.probabilities_view",
    "LogitLensView": "kerasllm_widget.widgets.logit_lens_view",
    "AttributionView": "kerasllm_widget.widgets.attribution_view",
    "TrainingMonitor": "kerasllm_widget.widgets.training_monitor",
    "CompareView": "kerasllm_widget.widgets.compare_view",
    "PresetError": "kerasllm_widget.checkpoints.errors",
}

__all__ = sorted(_EXPORTS) + ["load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kerasllm_widget' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def load_ipython_extension(ipython) -> None:
    """`%load_ext kerasllm_widget`: registers the inspector cell magics."""
    from kerasllm_widget.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from kerasllm_widget.magics import unload_ipython_extension as unload

    unload(ipython)
