"""llama.cpp's tensor names and layouts, and the Hugging Face ones they stand for.

llama.cpp names a llama model's tensors ``token_embd.weight``, ``blk.{i}.attn_q.weight``, ...;
`hf_tensor_name` gives the transformers name of each. It also permutes the rows of ``q_proj`` and
``k_proj`` (it rotates interleaved pairs, transformers rotates halves); `unpermute_rows` puts
them back.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import CheckpointFormatError

__all__ = ["LAYER_PATTERN", "ROPE_FREQS", "hf_tensor_name", "unpermute_rows"]

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
}
LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")
# Llama 3.1/3.2 RoPE scaling, stored as per-frequency divisors (see `gguf_config`).
ROPE_FREQS = "rope_freqs.weight"


def hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name, or None if it is not a llama tensor.

    Example:
        >>> hf_tensor_name("blk.3.attn_q.weight"), hf_tensor_name("rope_freqs.weight")
        ('model.layers.3.self_attn.q_proj.weight', None)
    """
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = LAYER_PATTERN.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's reordering of the rows of a q/k projection (or its bias).

    llama.cpp's converter rewrites each head's rows from "first half, second half" (the pairs that
    transformers' `rotate_half` rotates together) to interleaved pairs (what ggml's RoPE rotates).
    Pass the number of query heads for q and of key/value heads for k.

    Example:
        >>> w = np.arange(8.0).reshape(8, 1)  # one head of dim 8, as llama.cpp stores it
        >>> unpermute_rows(w, 1)[:, 0].tolist()
        [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise CheckpointFormatError(
            f"cannot split {rows} rows into {num_heads} heads of rotary pairs; the head counts in "
            "the GGUF metadata do not match the q/k tensors"
        )
    half = rows // num_heads // 2
    return (
        weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )
