"""The one Llama forward: every way the model runs (its Keras ``call``, the engine's prefill and
decode, the inspectors, training) goes through `forward` and `logits`, so there is one place
where its arithmetic lives and one vocabulary for its insides, the hook points (listed in
`kerasllm_widget.models.hook_points`).

A `Hooks` object says which points to capture and which to edit; an edit is a traceable
function of the value that returns its replacement, so it compiles into a jitted program like
the rest (parameters passed as arrays, an edit that only changes a number recompiles nothing).
``layers.{i}.attention.probs`` exists only when asked for: that layer then takes the
explicit-softmax attention, the others stay fused.

``layout`` carries the inference-only arrays the engine derives once (fused q/k/v and gate/up
kernels, transposed or int8 copies, a transposed output projection) and whether the native CPU
kernel runs (``layout.kernels``): one object, part of the engine's compile key. The Keras layers
never see it; without it, the forward reads the layers' own weights.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import keras
from keras import ops

from kerasllm_widget.kernels import cpu
from kerasllm_widget.kernels.products import (
    QuantizedKernel,
    StreamedKernel,
    dense_product,
    for_rows,
    product,
    swiglu,
)
from kerasllm_widget.models.hook_points import (
    _NO_HOOKS,
    HOOK_POINTS,
    Edit,
    EditSet,
    Hooks,
    expand_hook_names,
    hook_point_names,
)
from kerasllm_widget.models.rotary_embedding import apply_rotary_tables, rotary_tables

__all__ = [
    "HOOK_POINTS",
    "Edit",
    "EditSet",
    "MASK_VALUE",
    "Hooks",
    "TransposedAttentionKernels",
    "attention_block",
    "decoder_block",
    "embed",
    "expand_hook_names",
    "project_qkv",
    "forward",
    "hook_point_names",
    "logits",
]

# A large finite negative instead of -inf: a fully masked row (a left-padding query) then gets a
# harmless uniform softmax instead of NaNs that would poison the rest of the batch.
MASK_VALUE = -1e9

# ----------------------------------------------------------------------------- the stack


def forward(
    backbone,
    token_ids,
    *,
    positions,
    attention_mask,
    cache=None,
    cache_index=None,
    layout=None,
    hooks: Hooks | None = None,
):
    """Final hidden states ``[B, T, D]`` (after the final norm) and the new cache (None without
    one). ``attention_mask [B, T, S]``: True where query t may see key s (S is T without a
    cache, else the cache length); ``cache``: per layer ``(keys, values)`` ``[B, S, kv, hd]``,
    this call's keys written at ``cache_index``.

    Example:
        >>> hidden, _ = forward(backbone, ids, positions=pos, attention_mask=mask)  # doctest: +SKIP
    """
    hooks = hooks or _NO_HOOKS
    kernels = bool(getattr(layout, "kernels", False))
    x = hooks("embed", embed(backbone.token_embedding, token_ids, kernels))
    rope = rotary_tables(positions, backbone.inverse_frequencies)
    new_cache = [] if cache is not None else None
    for i, layer in enumerate(backbone.transformer_layers):
        x, layer_cache = decoder_block(
            layer,
            x,
            rope=rope,
            attention_mask=attention_mask,
            cache=None if cache is None else cache[i],
            cache_index=cache_index,
            fused=None if layout is None else layout.layers[i],
            kernels=kernels,
            hooks=hooks,
            index=i,
        )
        if new_cache is not None:
            new_cache.append(layer_cache)
    return hooks("final_norm.out", backbone.layer_norm(x)), new_cache


def embed(embedding, token_ids, kernels: bool = False):
    """The token embedding lookup. A 16-bit table is never widened: XLA on a CPU converts a
    bfloat16 gather's whole operand to float32, and a bit-cast to integers is hoisted out of the
    decode loop as a copy of the whole table (113 MB / 56 MB for SmolLM2, once per decode call),
    so with the CPU kernel the rows are copied by it (`cpu.take_rows`) and otherwise gathered as
    16-bit integers. Quantized or LoRA tables, and other backends, keep the layer's call."""
    if (
        keras.backend.backend() != "jax"
        or getattr(embedding, "quantization_mode", None)
        or getattr(embedding, "lora_enabled", False)
    ):
        return embedding(token_ids)
    table = ops.convert_to_tensor(embedding.embeddings)
    ids = ops.cast(token_ids, "int32")
    if kernels:
        return cpu.take_rows(table, ids).astype(embedding.compute_dtype)
    if table.dtype.itemsize != 2:
        return jax.numpy.take(table, ids, axis=0).astype(embedding.compute_dtype)
    rows = jax.numpy.take(jax.lax.bitcast_convert_type(table, jax.numpy.uint16), ids, axis=0)
    return jax.lax.bitcast_convert_type(rows, table.dtype).astype(embedding.compute_dtype)


def logits(backbone, hidden, layout=None, hooks: Hooks | None = None):
    """Float32 logits ``[..., vocabulary]`` of final hidden states: the tied embedding table (or
    the untied output projection), or the layout's own copy of it."""
    hooks = hooks or _NO_HOOKS
    embedding = backbone.token_embedding
    lm_head = getattr(layout, "lm_head", None)
    kernels = bool(getattr(layout, "kernels", False))
    if lm_head is not None:  # [hidden, vocabulary], or an int8 [vocabulary, hidden] copy
        quantized = isinstance(lm_head, QuantizedKernel)
        hidden = ops.cast(hidden, "float32" if quantized else lm_head.dtype)
        result = product(hidden, lm_head, kernels=kernels)
    elif kernels and getattr(embedding, "quantization_mode", None) is None:
        # The [vocabulary, hidden] table read in place (tied) or [hidden, vocabulary].
        tied = embedding.tie_weights
        table = embedding.embeddings if tied else embedding.reverse_embeddings
        result = product(
            ops.cast(hidden, embedding.compute_dtype), table, transposed=tied, kernels=True
        )
    elif getattr(layout, "streamed_lm_head", False):  # the tied table read in place, on a GPU
        result = product(
            ops.cast(hidden, embedding.compute_dtype), StreamedKernel(embedding.embeddings)
        )
    else:
        result = embedding(hidden, reverse=True)
    return hooks("logits", ops.cast(result, "float32"))


# ----------------------------------------------------------------------------- one block


def decoder_block(
    layer,
    x,
    *,
    rope,
    attention_mask,
    cache=None,
    cache_index=None,
    fused=None,
    kernels: bool = False,
    hooks: Hooks | None = None,
    index: int = 0,
):
    """``h = x + attention(norm(x)); out = h + down(silu(gate(norm(h))) * up(norm(h)))`` for the
    `Llama3TransformerDecoder` ``layer``. Returns ``(out, new_cache)``."""
    hooks = hooks or _NO_HOOKS
    fused = for_rows(fused or {}, x, kernels)
    x = hooks(f"layers.{index}.residual_in", x)
    attended, cache = attention_block(
        layer.attention,
        layer.attention_norm(x),
        rope=rope,
        attention_mask=attention_mask,
        cache=cache,
        cache_index=cache_index,
        fused_qkv=fused.get("qkv"),
        kernels=kernels,
        hooks=hooks,
        index=index,
    )
    x = x + hooks(f"layers.{index}.attention.out", attended)
    h = layer.feedforward_norm(x)
    if "gate_up" in fused:
        hidden = swiglu(h, fused["gate_up"], layer.intermediate_dim, kernels=kernels)
    else:
        gate = dense_product(layer.feedforward_gate_dense, h, kernels=kernels)
        up = dense_product(layer.feedforward_intermediate_dense, h, kernels=kernels)
        hidden = ops.silu(gate) * up
    if "down" in fused:
        down = product(hidden, fused["down"], kernels=kernels)
    else:
        down = dense_product(layer.feedforward_output_dense, hidden, kernels=kernels)
    x = x + hooks(f"layers.{index}.mlp.out", down)
    return hooks(f"layers.{index}.residual_out", x), cache


class TransposedAttentionKernels(NamedTuple):
    """The fused query/key/value kernel ``[(heads + 2 * kv_heads) * head_dim, hidden]`` and the
    output kernel ``[hidden, heads * head_dim]``, both stored ``[out, in]``: float arrays, or
    int8 `QuantizedKernel` pairs (see `kerasllm_widget.generation.fused_weights`)."""

    qkv: Any
    output: Any


def attention_block(
    attention,
    x,
    *,
    rope,
    attention_mask,
    cache=None,
    cache_index=None,
    fused_qkv=None,
    kernels: bool = False,
    hooks: Hooks | None = None,
    index: int = 0,
):
    """Grouped-query self-attention with RoPE and a static key/value cache, for the
    `Llama3Attention` ``attention``. Returns ``(output, new_cache)``.

    ``fused_qkv``: the query, key and value kernels side by side ``[hidden, (H + 2K) * hd]``,
    or a `TransposedAttentionKernels` (which also stands in for the output kernel)."""
    hooks = hooks or _NO_HOOKS
    transposed = fused_qkv if isinstance(fused_qkv, TransposedAttentionKernels) else None
    query, key, value = project_qkv(attention, x, rope, fused_qkv=fused_qkv, kernels=kernels)
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    heads, head_dim = attention.num_query_heads, attention.head_dim
    if cache is not None:
        key_cache, value_cache = cache
        start = (0, cache_index, 0, 0)
        key = ops.slice_update(key_cache, start, ops.cast(key, key_cache.dtype))
        value = ops.slice_update(value_cache, start, ops.cast(value, value_cache.dtype))
        cache = (key, value)

    if hooks.wants_probabilities(index):
        probabilities = explicit_probabilities(
            query, key, attention_mask, attention.num_key_value_heads
        )
        probabilities = hooks(f"layers.{index}.attention.probs", probabilities)
        output = weighted_values(probabilities, value)
    elif kernels and length == 1:
        output = one_query_attention(query, key, value, attention_mask)
    else:
        output = fused_attention(query, key, value, attention_mask)
    output = ops.reshape(output, (batch, length, heads * head_dim))
    if transposed is not None:
        return product(output, transposed.output, transposed=True, kernels=kernels), cache
    return dense_product(attention.output_dense, output, kernels=kernels), cache


def project_qkv(attention, x, rope, *, fused_qkv=None, kernels: bool = False, parts: str = "qkv"):
    """Queries ``[B, T, H, hd]``, keys and values ``[B, T, K, hd]`` of the attention's input
    ``x`` (RoPE applied to queries and keys), the ones named in ``parts`` (``"qk"``: queries and
    keys; ``"kv"``: keys and values), in that order. Unfused layers compute only those."""
    heads, kv_heads, head_dim = (
        attention.num_query_heads,
        attention.num_key_value_heads,
        attention.head_dim,
    )
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    query_width, kv_width = heads * head_dim, kv_heads * head_dim
    if fused_qkv is not None:
        if isinstance(fused_qkv, TransposedAttentionKernels):
            qkv = product(x, fused_qkv.qkv, transposed=True, kernels=kernels)
        else:
            qkv = product(x, fused_qkv, kernels=kernels)
        flat = {
            "q": qkv[..., :query_width],
            "k": qkv[..., query_width : query_width + kv_width],
            "v": qkv[..., query_width + kv_width :],
        }
    else:
        denses = {"q": attention.query_dense, "k": attention.key_dense, "v": attention.value_dense}
        flat = {p: dense_product(denses[p], x, kernels=kernels) for p in parts}
    cos, sin = rope
    out = []
    for part in parts:
        count = heads if part == "q" else kv_heads
        value = ops.reshape(flat[part], (batch, length, count, head_dim))
        out.append(value if part == "v" else apply_rotary_tables(value, cos, sin))
    return tuple(out)


def explicit_probabilities(query, key, attention_mask, kv_heads: int):
    """Attention probabilities ``[B, H, T, S]`` in float32, softmax written out (the reference's
    "eager" attention), grouped so that K/V heads are never repeated; exact zeros where masked."""
    batch, length, heads, head_dim = ops.shape(query)
    groups = heads // kv_heads
    grouped = ops.reshape(query, (batch, length, kv_heads, groups, head_dim))
    scores = ops.einsum("btkgd,bskd->bkgts", grouped, key)
    scores = ops.cast(scores, "float32") * (1.0 / math.sqrt(head_dim))
    scores = ops.where(attention_mask[:, None, None, :, :], scores, MASK_VALUE)
    probabilities = ops.reshape(
        ops.softmax(scores, axis=-1), (batch, heads, length, ops.shape(key)[1])
    )
    # Exact zeros on masked keys (the finite mask value leaves ~1e-400 there otherwise).
    return ops.where(attention_mask[:, None, :, :], probabilities, 0.0)


def weighted_values(probabilities, value):
    """``probabilities [B, H, T, S]`` applied to ``value [B, S, K, hd]``: ``[B, T, H, hd]``."""
    batch, heads, length, slots = ops.shape(probabilities)
    kv_heads = ops.shape(value)[2]
    grouped = ops.reshape(probabilities, (batch, kv_heads, heads // kv_heads, length, slots))
    output = ops.einsum("bkgts,bskd->btkgd", ops.cast(grouped, value.dtype), value)
    return ops.reshape(output, (batch, length, heads, ops.shape(value)[3]))


def fused_attention(query, key, value, attention_mask):
    """``keras.ops.dot_product_attention`` (cuDNN/flash where the backend has it). XLA on a CPU
    has no float16 x float16 -> float32 dot (JAX asks for float32 accumulation), so float16
    attention runs in float32 there and the output is cast back."""
    dtype = query.dtype
    widen = (
        str(dtype) == "float16"
        and keras.backend.backend() == "jax"
        and jax.default_backend() == "cpu"
    )
    if widen:
        query, key, value = (ops.cast(t, "float32") for t in (query, key, value))
    output = ops.dot_product_attention(
        query,
        key,
        value,
        mask=attention_mask[:, None, :, :],
        scale=1.0 / math.sqrt(ops.shape(query)[-1]),
    )
    return ops.cast(output, dtype) if widen else output


def one_query_attention(query, key, value, attention_mask):
    """One query per sequence against the cache as it is laid out, in the CPU kernel
    (`kerasllm_widget.kernels.cpu.attention`). As XLA dot products the decode step transposed
    every layer's cache and made tiny library calls (about a third of a SmolLM2 step)."""
    batch, _, heads, head_dim = ops.shape(query)
    output = cpu.attention(
        ops.reshape(query, (batch, heads, head_dim)),
        key,
        value,
        attention_mask[:, 0, :],
        1.0 / math.sqrt(head_dim),
    )
    return ops.reshape(output, (batch, 1, heads, head_dim))
