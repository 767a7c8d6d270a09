"""Rotary position embedding (RoPE) with Llama 3's frequency scaling."""

from __future__ import annotations

import math

import numpy as np
from keras import ops


def rope_inverse_frequencies(
    head_dim: int, max_wavelength: float = 10000.0, scaling: dict | None = None
) -> np.ndarray:
    """The per-pair rotation frequencies, float32, shape ``[head_dim // 2]``.

    ``scaling`` is Hugging Face's ``rope_scaling`` dict: ``rope_type`` "default", "linear" or
    "llama3" (with ``factor``, ``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``). The arithmetic follows transformers'
    ``_compute_llama3_parameters`` step by step in float32 so that logits agree to 1e-5.

    Example:
        >>> rope_inverse_frequencies(4, 10000.0).tolist()
        [1.0, 0.009999999776482582]
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(max_wavelength) ** exponents)).astype(np.float32)
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return inv_freq
    if rope_type == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if rope_type != "llama3":
        raise ValueError(
            f"RoPE scaling type {rope_type!r} is not supported; supported: 'default', 'linear', "
            "'llama3'. Check `rope_scaling` / `rope_parameters` in the checkpoint's config.json."
        )
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = (2 * math.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rotary_tables(positions, inverse_frequencies):
    """``(cos, sin)``, float32 ``[B, T, 1, head_dim]``, for ``positions [B, T]``: computed once
    per forward pass and shared by every layer."""
    angles = ops.cast(positions, "float32")[..., None] * ops.convert_to_tensor(inverse_frequencies)
    angles = ops.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, head_dim]
    return ops.cos(angles), ops.sin(angles)


def apply_rotary_tables(x, cos, sin):
    """Rotates ``x [B, T, heads, head_dim]`` with tables from `rotary_tables`."""
    cos = ops.cast(cos, x.dtype)
    sin = ops.cast(sin, x.dtype)
    half = x.shape[-1] // 2
    rotated = ops.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def apply_rotary_embedding(x, positions, inverse_frequencies):
    """Rotates ``x [B, T, heads, head_dim]`` by ``positions [B, T]`` (rotate-half convention).

    Hugging Face checkpoints store Q/K rows in the rotate-half order; GGUF files use the
    interleaved order and are converted when read (`checkpoints/gguf_tensor_names.py`).
    """
    return apply_rotary_tables(x, *rotary_tables(positions, inverse_frequencies))
