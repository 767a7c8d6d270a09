"""Weights that are about to be loaded: memory set aside, nothing written, nothing computed."""

from __future__ import annotations

import keras
import numpy as np

# XLA on CPU adopts a host buffer aligned to 64 bytes instead of copying it.
HOST_ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    On JAX's CPU backend ``jax.device_put`` takes such an array as it is (no copy), so a weight
    filled in one exists once, not twice, on its way into a model.

    Example:
        >>> aligned_empty((3, 5), "float32").ctypes.data % 64
        0
    """
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

    dtype = np.dtype(dtype)
    shape = tuple(int(dim) for dim in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + HOST_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % HOST_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


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
