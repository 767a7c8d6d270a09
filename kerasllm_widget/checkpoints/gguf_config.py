"""A transformers ``config.json`` for a llama GGUF, from its metadata.

The hyperparameters are metadata fields (``llama.embedding_length``, ``llama.block_count``, ...),
read here under transformers' names. One thing llama.cpp changes on the way in is undone: Llama
3.1/3.2 RoPE scaling is stored as a ``rope_freqs.weight`` tensor of per-frequency divisors rather
than as parameters, so the parameters are recovered from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import CheckpointFormatError, UnsupportedModelError
from .gguf_reader import RawTensor
from .gguf_tensor_names import ROPE_FREQS

__all__ = ["SUPPORTED_ARCHITECTURES", "check_architecture", "hf_config", "llama3_rope_divisors"]

SUPPORTED_ARCHITECTURES = ("llama",)

# Llama 3.1/3.2's values; llama.cpp stores only the resulting divisors (see `_recover_llama3_rope`).
_LLAMA3_LOW_FREQ_FACTOR = 1.0
_LLAMA3_HIGH_FREQ_FACTOR = 4.0
_LLAMA3_ORIGINAL_CONTEXT = 8192


def llama3_rope_divisors(
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
    rope_theta: float,
    head_dim: int,
) -> np.ndarray:
    """The per-frequency divisors llama.cpp writes as ``rope_freqs.weight`` for llama3 RoPE scaling.

    One value per rotary frequency (``head_dim // 2``): 1 for high frequencies, ``factor`` for low
    ones, and a smooth blend between, as in transformers' ``_compute_llama3_parameters``.

    Example:
        >>> d = llama3_rope_divisors(32.0, 1.0, 4.0, 8192, 500000.0, 64)
        >>> float(d[0]), float(d[-1])
        (1.0, 32.0)
    """
    inv_freq = 1.0 / (
        np.float32(rope_theta)
        ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    )
    wavelen = 2 * math.pi / inv_freq.astype(np.float64)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    divisors = np.where(
        wavelen < high_freq_wavelen, 1.0, np.where(wavelen > low_freq_wavelen, factor, blended)
    )
    return divisors.astype(np.float32)


def _recover_llama3_rope(
    divisors: np.ndarray, rope_theta: float, head_dim: int, where: str
) -> dict[str, Any]:
    """The ``rope_scaling`` dict that produced a ``rope_freqs.weight`` tensor."""
    divisors = np.asarray(divisors, dtype=np.float32).reshape(-1)
    factor = float(str(np.float32(divisors.max()))) if divisors.size else float("nan")
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": _LLAMA3_LOW_FREQ_FACTOR,
        "high_freq_factor": _LLAMA3_HIGH_FREQ_FACTOR,
        "original_max_position_embeddings": _LLAMA3_ORIGINAL_CONTEXT,
    }
    if divisors.shape == (head_dim // 2,) and np.isfinite(factor) and factor >= 1.0:
        expected = llama3_rope_divisors(
            factor,
            _LLAMA3_LOW_FREQ_FACTOR,
            _LLAMA3_HIGH_FREQ_FACTOR,
            _LLAMA3_ORIGINAL_CONTEXT,
            rope_theta,
            head_dim,
        )
        if np.allclose(divisors, expected, rtol=1e-5, atol=1e-6):
            return scaling
        detail = f"the largest difference is {float(np.abs(divisors - expected).max()):.3g}"
    else:
        detail = f"it has shape {divisors.shape} and maximum {factor}, expected {head_dim // 2} values >= 1"
    raise CheckpointFormatError(
        f"{where}: rope_freqs.weight does not match Llama 3 RoPE scaling with factor {factor}, "
        f"low_freq_factor 1, high_freq_factor 4 and original_max_position_embeddings 8192 "
        f"({detail}), so its RoPE scaling cannot be recovered. Use the model's Hugging Face "
        "safetensors checkpoint instead."
    )


def _required(metadata: dict[str, Any], key: str, where: str) -> Any:
    if key not in metadata:
        raise CheckpointFormatError(
            f"{where}: the GGUF metadata has no {key!r}, which a llama model needs. The file is "
            "incomplete; re-download it or convert it again with a recent llama.cpp."
        )
    return metadata[key]


def check_architecture(metadata: dict[str, Any], where: str) -> None:
    """Raises `UnsupportedModelError` unless the metadata describes a supported architecture.

    Example:
        >>> check_architecture({"general.architecture": "llama"}, "model.gguf")
    """
    architecture = metadata.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{where}: GGUF architecture {architecture!r} is not supported. Supported: "
            f"{', '.join(repr(a) for a in SUPPORTED_ARCHITECTURES)} (Llama 2, 3, 3.1, 3.2, "
            "SmolLM2, TinyLlama)."
        )
    if metadata.get("llama.expert_count"):
        raise UnsupportedModelError(
            f"{where}: this llama GGUF is a mixture of experts (llama.expert_count = "
            f"{metadata['llama.expert_count']}, e.g. Mixtral), which is not supported."
        )


def hf_config(
    metadata: dict[str, Any],
    tensors: dict[str, RawTensor],
    read_raw: Callable[[str], np.ndarray],
    where: str,
) -> dict[str, Any]:
    """A transformers ``config.json`` dict for a llama GGUF.

    ``read_raw(gguf_name)`` reads a whole tensor as float32 (only ``rope_freqs.weight`` is read).

    Example:
        >>> config = hf_config(metadata, tensors, read_raw, "model.gguf")  # doctest: +SKIP
        >>> config["num_hidden_layers"]  # doctest: +SKIP
        30
    """
    hidden_size = _required(metadata, "llama.embedding_length", where)
    num_heads = _required(metadata, "llama.attention.head_count", where)
    num_kv_heads = metadata.get("llama.attention.head_count_kv", num_heads)
    head_dim = metadata.get(
        "llama.attention.key_length",
        metadata.get("llama.rope.dimension_count", hidden_size // num_heads),
    )
    rope_theta = metadata.get("llama.rope.freq_base", 10000.0)
    vocab_size = metadata.get("llama.vocab_size")
    if vocab_size is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        if tokens:
            vocab_size = len(tokens)
        elif "token_embd.weight" in tensors:
            vocab_size = tensors["token_embd.weight"].shape[0]
        else:
            vocab_size = _required(metadata, "llama.vocab_size", where)

    if ROPE_FREQS in tensors:
        rope_scaling = _recover_llama3_rope(read_raw(ROPE_FREQS), rope_theta, head_dim, where)
    else:
        rope_scaling = _rope_scaling_from_metadata(metadata, where)

    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": _required(metadata, "llama.feed_forward_length", where),
        "num_hidden_layers": _required(metadata, "llama.block_count", where),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": metadata.get("llama.attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": metadata.get("llama.context_length", 2048),
        # llama.cpp leaves output.weight out when the output layer reuses the embedding.
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
    }
    for key, field_name in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        if field_name in metadata:
            config[key] = metadata[field_name]
    return config


def _rope_scaling_from_metadata(metadata: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = metadata.get("llama.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": metadata.get("llama.rope.scaling.factor", 1.0)}
    raise UnsupportedModelError(
        f"{where}: RoPE scaling {kind!r} (llama.rope.scaling.type) is not supported; supported are "
        "none, linear, and llama3 (stored as rope_freqs.weight)."
    )
