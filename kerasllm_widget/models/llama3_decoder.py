"""One Llama transformer block: pre-norm attention and a SwiGLU feed-forward network (the
weights; the arithmetic is `kerasllm_widget.models.llama3_forward.decoder_block`)."""

from __future__ import annotations

import keras
import numpy as np

from kerasllm_widget.models.llama3_attention import Llama3Attention
from kerasllm_widget.models.llama3_forward import Hooks, decoder_block
from kerasllm_widget.models.rms_normalization import RMSNormalization
from kerasllm_widget.models.rotary_embedding import rotary_tables


class Llama3TransformerDecoder(keras.layers.Layer):
    """``h = x + attention(norm(x)); out = h + down(silu(gate(norm(h))) * up(norm(h)))``.

    Example:
        >>> import numpy as np
        >>> block = Llama3TransformerDecoder(hidden_dim=16, intermediate_dim=32, num_query_heads=4,
        ...     num_key_value_heads=2, head_dim=4, inverse_frequencies=np.ones(2, "float32"))
        >>> x = np.zeros((1, 3, 16), "float32")
        >>> block(x, positions=np.arange(3)[None], attention_mask=np.ones((1, 3, 3), bool))[0].shape
        (1, 3, 16)
    """

    def __init__(
        self,
        hidden_dim: int,
        intermediate_dim: int,
        num_query_heads: int,
        num_key_value_heads: int,
        head_dim: int,
        inverse_frequencies,
        layer_norm_epsilon: float = 1e-5,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.inverse_frequencies = np.asarray(inverse_frequencies, dtype="float32")
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        policy = self.dtype_policy
        self.attention_norm = RMSNormalization(layer_norm_epsilon, dtype=policy, name="attn_norm")
        self.attention = Llama3Attention(
            hidden_dim=hidden_dim,
            num_query_heads=num_query_heads,
            num_key_value_heads=num_key_value_heads,
            head_dim=head_dim,
            inverse_frequencies=inverse_frequencies,
            use_bias=attention_bias,
            kernel_initializer=kernel_initializer,
            dtype=policy,
            name="attention",
        )
        self.feedforward_norm = RMSNormalization(layer_norm_epsilon, dtype=policy, name="ffn_norm")

        def dense(units, name):
            return keras.layers.Dense(
                units,
                use_bias=mlp_bias,
                kernel_initializer=kernel_initializer,
                dtype=policy,
                name=name,
            )

        self.feedforward_gate_dense = dense(intermediate_dim, "ffn_gate")
        self.feedforward_intermediate_dense = dense(intermediate_dim, "ffn_up")
        self.feedforward_output_dense = dense(hidden_dim, "ffn_down")

    def build(self, input_shape):
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape)
        self.feedforward_norm.build(input_shape)
        self.feedforward_gate_dense.build(input_shape)
        self.feedforward_intermediate_dense.build(input_shape)
        self.feedforward_output_dense.build((*input_shape[:-1], self.intermediate_dim))
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
        """Returns ``(output, new_cache, attention_probabilities_or_None)``."""
        hooks = Hooks(capture=["layers.0.attention.probs"] if return_probabilities else ())
        output, cache = decoder_block(
            self,
            x,
            rope=rotary_tables(positions, self.attention.inverse_frequencies),
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
            "intermediate_dim": self.intermediate_dim,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "inverse_frequencies": [float(f) for f in self.inverse_frequencies],
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
