"""Root-mean-square layer normalisation, as Llama uses it."""

from __future__ import annotations

import keras
from keras import ops


class RMSNormalization(keras.layers.Layer):
    """``x / sqrt(mean(x**2) + epsilon) * scale``, computed in float32 like the reference.

    Example:
        >>> norm = RMSNormalization(epsilon=1e-5)
        >>> norm(keras.ops.ones((1, 2, 8))).shape
        (1, 2, 8)
    """

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")
        self.built = True

    def call(self, x):
        # Normalise in float32 whatever the compute dtype: bfloat16 sums of squares lose too much.
        x32 = ops.cast(x, "float32")
        variance = ops.mean(ops.square(x32), axis=-1, keepdims=True)
        normed = ops.cast(x32 * ops.rsqrt(variance + self.epsilon), self.compute_dtype)
        return normed * ops.cast(self.scale, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
