"""Grouped-query self-attention with RoPE and a static key/value cache.

Two paths give the same outputs:

- the fast path (``return_probabilities=False``) hands the whole computation to
  ``keras.ops.dot_product_attention`` so each backend can fuse it (cuDNN/flash on a GPU);
- the explicit path (``return_probabilities=True``) writes the softmax out so the attention
  probabilities can be returned to the inspectors. It is the reference's "eager" attention.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import keras
import numpy as np
from keras import ops

from kerasllm_widget.kernels import cpu
from kerasllm_widget.kernels.products import dense_product, product
from kerasllm_widget.models.rotary_embedding import apply_rotary_tables, rotary_tables

# A large finite negative instead of -inf: a fully masked row (a left-padding query) then gets a
# harmless uniform softmax instead of NaNs that would poison the rest of the batch.
_MASK_VALUE = -1e9


def _fused_attention(query, key, value, attention_mask, head_dim: int):
    """``keras.ops.dot_product_attention``. XLA on a CPU has no float16 x float16 -> float32 dot
    (JAX asks for float32 accumulation), so float16 attention runs in float32 there and the
    output is cast back; bfloat16 and accelerators keep their own dtype."""
    dtype = query.dtype
    widen = str(dtype) == "float16" and keras.backend.backend() == "jax" and _on_cpu()
    if widen:
        query, key, value = (ops.cast(t, "float32") for t in (query, key, value))
    output = ops.dot_product_attention(
        query, key, value, mask=attention_mask[:, None, :, :], scale=1.0 / math.sqrt(head_dim)
    )
    return ops.cast(output, dtype) if widen else output


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


class TransposedAttentionKernels(NamedTuple):
    """The fused query/key/value kernel ``[(heads + 2 * kv_heads) * head_dim, hidden]`` and the
    output kernel ``[hidden, heads * head_dim]``, both stored ``[out, in]``: float arrays, or
    int8 `QuantizedKernel` pairs (see `kerasllm_widget.generation.fused_weights`)."""

    qkv: Any
    output: Any


class Llama3Attention(keras.layers.Layer):
    """Multi-head attention with ``num_key_value_heads`` shared K/V heads (GQA).

    Example:
        >>> import numpy as np
        >>> layer = Llama3Attention(hidden_dim=16, num_query_heads=4, num_key_value_heads=2, head_dim=4,
        ...                         inverse_frequencies=np.ones(2, "float32"))
        >>> x = np.zeros((1, 3, 16), "float32")
        >>> mask = np.tril(np.ones((1, 3, 3), bool))
        >>> layer(x, positions=np.arange(3)[None], attention_mask=mask)[0].shape
        (1, 3, 16)
    """

    def __init__(
        self,
        hidden_dim: int,
        num_query_heads: int,
        num_key_value_heads: int,
        head_dim: int,
        inverse_frequencies,
        use_bias: bool = False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.inverse_frequencies = np.asarray(inverse_frequencies, dtype="float32")
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

        def dense(units, name):
            return keras.layers.Dense(
                units,
                use_bias=use_bias,
                kernel_initializer=kernel_initializer,
                dtype=self.dtype_policy,
                name=name,
            )

        self.query_dense = dense(num_query_heads * head_dim, "query")
        self.key_dense = dense(num_key_value_heads * head_dim, "key")
        self.value_dense = dense(num_key_value_heads * head_dim, "value")
        self.output_dense = dense(hidden_dim, "attention_output")

    def build(self, input_shape):
        for layer in (self.query_dense, self.key_dense, self.value_dense):
            layer.build(input_shape)
        self.output_dense.build((*input_shape[:-1], self.num_query_heads * self.head_dim))
        self.built = True

    def call(
        self,
        x,
        positions,
        attention_mask,
        cache=None,
        cache_index=None,
        return_probabilities: bool = False,
        rope=None,
        fused_qkv=None,
        kernels: bool = False,
    ):
        """Returns ``(output, new_cache, probabilities_or_None)``.

        Args:
            x: ``[B, T, hidden]``.
            positions: ``[B, T]`` integer RoPE positions.
            attention_mask: ``[B, T, S]`` bool, True where query t may attend key s; S is T without
                a cache, else the cache length.
            cache: ``(keys, values)``, each ``[B, S, num_key_value_heads, head_dim]``, or None.
            cache_index: where this call's T keys are written into the cache.
            return_probabilities: use the explicit path and return ``[B, heads, T, S]``.
            rope: ``(cos, sin)`` from `rotary_tables` for these positions (computed here when None).
            fused_qkv: the query, key and value kernels side by side
                ``[hidden, (heads + 2 * kv_heads) * head_dim]`` (the engine derives it): one
                product instead of three; or a `TransposedAttentionKernels`, which also stands
                in for the output kernel.
            kernels: send decode-sized products to the CPU kernel (the engine's programs on a
                CPU; see `kerasllm_widget.kernels.products`).
        """
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        query_width = self.num_query_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        transposed = fused_qkv if isinstance(fused_qkv, TransposedAttentionKernels) else None
        if transposed is not None:
            qkv = product(x, transposed.qkv, transposed=True, kernels=kernels)
        elif fused_qkv is not None:
            qkv = product(x, fused_qkv, kernels=kernels)
        if fused_qkv is not None:
            query = qkv[..., :query_width]
            key = qkv[..., query_width : query_width + kv_width]
            value = qkv[..., query_width + kv_width :]
        else:
            query, key, value = (
                dense_product(dense, x, kernels=kernels)
                for dense in (self.query_dense, self.key_dense, self.value_dense)
            )
        query = ops.reshape(query, (batch, length, self.num_query_heads, self.head_dim))
        key = ops.reshape(key, (batch, length, self.num_key_value_heads, self.head_dim))
        value = ops.reshape(value, (batch, length, self.num_key_value_heads, self.head_dim))
        cos, sin = rope if rope is not None else rotary_tables(positions, self.inverse_frequencies)
        query = apply_rotary_tables(query, cos, sin)
        key = apply_rotary_tables(key, cos, sin)

        if cache is not None:
            key_cache, value_cache = cache
            start = (0, cache_index, 0, 0)
            key = ops.slice_update(key_cache, start, ops.cast(key, key_cache.dtype))
            value = ops.slice_update(value_cache, start, ops.cast(value, value_cache.dtype))
            cache = (key, value)

        if return_probabilities:
            output, probabilities = self._explicit_attention(query, key, value, attention_mask)
        elif kernels and length == 1:
            output, probabilities = self._one_query_attention(query, key, value, attention_mask)
        else:
            output = _fused_attention(query, key, value, attention_mask, self.head_dim)
            probabilities = None
        output = ops.reshape(output, (batch, length, self.num_query_heads * self.head_dim))
        if transposed is not None:
            output = product(output, transposed.output, transposed=True, kernels=kernels)
            return output, cache, probabilities
        return dense_product(self.output_dense, output, kernels=kernels), cache, probabilities

    def _one_query_attention(self, query, key, value, attention_mask):
        """One query per sequence against the cache as it is laid out, in the CPU kernel
        (`kerasllm_widget.kernels.cpu.attention`). As XLA dot products the decode step
        transposed every layer's cache and made tiny library calls (about a third of a SmolLM2
        step); as XLA reductions it was slower still."""
        batch = ops.shape(query)[0]
        output = cpu.attention(
            ops.reshape(query, (batch, self.num_query_heads, self.head_dim)),
            key,
            value,
            attention_mask[:, 0, :],
            1.0 / math.sqrt(self.head_dim),
        )
        return ops.reshape(output, (batch, 1, self.num_query_heads, self.head_dim)), None

    def _explicit_attention(self, query, key, value, attention_mask):
        """Softmax written out, in float32, grouped so that K/V heads are never repeated."""
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        groups = self.num_query_heads // self.num_key_value_heads
        query = ops.reshape(query, (batch, length, self.num_key_value_heads, groups, self.head_dim))
        scores = ops.einsum("btkgd,bskd->bkgts", query, key)
        scores = ops.cast(scores, "float32") * (1.0 / math.sqrt(self.head_dim))
        mask = attention_mask[:, None, None, :, :]
        scores = ops.where(mask, scores, _MASK_VALUE)
        probabilities = ops.softmax(scores, axis=-1)
        output = ops.einsum("bkgts,bskd->btkgd", ops.cast(probabilities, value.dtype), value)
        probabilities = ops.reshape(
            probabilities, (batch, self.num_query_heads, length, ops.shape(key)[1])
        )
        # Exact zeros on masked keys (the finite mask value leaves ~1e-400 there otherwise).
        probabilities = ops.where(attention_mask[:, None, :, :], probabilities, 0.0)
        return output, probabilities

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            # float32 -> float -> float32 is exact: `from_config` rebuilds the same RoPE.
            "inverse_frequencies": [float(f) for f in self.inverse_frequencies],
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
