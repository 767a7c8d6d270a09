"""Weights that are about to be loaded: memory set aside, nothing written, nothing computed."""

from __future__ import annotations

import keras

from kerasllm_widget.checkpoints.checkpoint import aligned_empty


@keras.saving.register_keras_serializable(package="kerasllm_widget")
class PlaceholderInitializer(keras.initializers.Initializer):
    """Initial values for weights that a checkpoint overwrites before the model is used.

    On JAX without a `keras.distribution`, each weight adopts an untouched host buffer: building a
    model this way takes neither time nor resident memory (zeros take about 2 s and the model's
    size for SmolLM2-135M). The values are whatever the memory holds, so a model built with it
    must be loaded before use. Elsewhere (other backends, sharded weights) it gives zeros.

    Example:
        >>> PlaceholderInitializer()((2, 3), "float32").shape
        (2, 3)
    """

    def __call__(self, shape, dtype=None):
        dtype = dtype or "float32"
        if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
            return keras.ops.zeros(shape, dtype=dtype)
        import jax

        return jax.device_put(aligned_empty(shape, dtype))
