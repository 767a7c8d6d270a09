"""One Llama transformer block: pre-norm attention and a SwiGLU feed-forward network."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kerasllm_widget.kernels.products import dense_product, for_rows, product
from kerasllm_widget.models.llama3_attention import Llama3Attention
from kerasllm_widget.models.rms_normalization import RMSNormalization


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
        rope=None,
        fused=None,
        kernels: bool = False,
    ):
        """Returns ``(output, new_cache, attention_probabilities_or_None)``.

        ``rope``: shared RoPE tables (see `Llama3Attention.call`). ``fused``: kernels the engine
        derives for inference, ``{"qkv": ..., "gate_up": ..., "down": ...}`` (any may be absent; see
        `kerasllm_widget.generation.fused_weights`). ``kernels``: the engine's programs on a CPU
        send decode-sized products to the CPU kernel (`kerasllm_widget.kernels.products`).
        """
        fused = for_rows(fused or {}, x, kernels)
        attended, cache, probabilities = self.attention(
            self.attention_norm(x),
            positions=positions,
            attention_mask=attention_mask,
            cache=cache,
            cache_index=cache_index,
            return_probabilities=return_probabilities,
            rope=rope,
            fused_qkv=fused.get("qkv"),
            kernels=kernels,
        )
        x = x + attended
        h = self.feedforward_norm(x)
        if "gate_up" in fused:
            gate_up = product(h, fused["gate_up"], kernels=kernels)
            gate, up = gate_up[..., : self.intermediate_dim], gate_up[..., self.intermediate_dim :]
        else:
            gate = dense_product(self.feedforward_gate_dense, h, kernels=kernels)
            up = dense_product(self.feedforward_intermediate_dense, h, kernels=kernels)
        hidden = ops.silu(gate) * up
        if "down" in fused:
            down = product(hidden, fused["down"], kernels=kernels)
        else:
            down = dense_product(self.feedforward_output_dense, hidden, kernels=kernels)
        return x + down, cache, probabilities

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
