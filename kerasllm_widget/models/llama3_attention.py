"""Grouped-query self-attention with RoPE and a static key/value cache: the weights, and a
``call`` that runs `kerasllm_widget.models.llama3_forward.attention_block`, where the arithmetic
lives (the fused path, or with ``return_probabilities`` the explicit softmax whose
probabilities the inspectors show).
"""

from __future__ import annotations

import keras
import numpy as np

from kerasllm_widget.models.llama3_forward import (
    Hooks,
    TransposedAttentionKernels,
    attention_block,
)
from kerasllm_widget.models.rotary_embedding import rotary_tables

__all__ = ["Llama3Attention", "TransposedAttentionKernels"]


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
        """
        hooks = Hooks(capture=["layers.0.attention.probs"] if return_probabilities else ())
        output, cache = attention_block(
            self,
            x,
            rope=rotary_tables(positions, self.inverse_frequencies),
            attention_mask=attention_mask,
            cache=cache,
            cache_index=cache_index,
            hooks=hooks,
        )
        return output, cache, hooks.captured.get("layers.0.attention.probs")

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
