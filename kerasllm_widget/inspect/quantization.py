"""Compact transport of arrays in [0, max]: 8 or 16 bits per value plus one float scale.

Attention probabilities are mostly tiny numbers beside a few large ones (the first token often
takes most of the mass). A linear 8-bit code would round every value under ``max/510`` to zero,
so the default code stores ``(x / scale) ** gamma`` with ``gamma = 0.5``: a square-root code keeps
values down to ``scale * 1.5e-5`` distinguishable from zero in 8 bits, at half the bytes of 16 bits.
The browser decodes with the same formula (``js/shared/codecs.ts``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DTYPES = {8: np.uint8, 16: np.uint16}


@dataclass(frozen=True)
class QuantizedArray:
    """Integer codes and what is needed to decode them: ``x = scale * (codes / levels) ** (1 / gamma)``."""

    codes: np.ndarray  # uint8 or uint16
    # The largest value of the original array (0 for an all-zero array); with ``per_row`` one
    # per index of the first axis, as a float32 array.
    scale: float | np.ndarray
    gamma: float

    @property
    def levels(self) -> int:
        return int(np.iinfo(self.codes.dtype).max)

    def header(self) -> dict:
        """The JSON half of a binary message: ``{dtype, shape, scale, gamma}``."""
        return {
            "dtype": self.codes.dtype.name,
            "shape": list(self.codes.shape),
            "scale": np.asarray(self.scale).tolist() if np.ndim(self.scale) else float(self.scale),
            "gamma": float(self.gamma),
        }

    def buffer(self) -> memoryview:
        """The binary half: the codes in C order, little-endian (what a browser's typed arrays read)."""
        codes = np.ascontiguousarray(self.codes, dtype=self.codes.dtype.newbyteorder("<"))
        return memoryview(codes).cast("B")

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes)


def quantize(
    values: np.ndarray, bits: int = 8, gamma: float = 0.5, per_row: bool = False
) -> QuantizedArray:
    """Codes non-negative values in ``bits`` (8 or 16) per value, relative to their maximum.

    With ``per_row``, each index of the first axis gets its own scale (the thumbnails of a
    layer's heads: a head whose largest weight is 0.1 still uses every code). The decoded value
    is within half a code step, in the gamma-compressed domain, of the input.

    Example:
        >>> q = quantize(np.array([0.0, 0.25, 1.0]), bits=8, gamma=1.0)
        >>> q.codes.tolist(), q.scale
        ([0, 64, 255], 1.0)
    """
    if bits not in _DTYPES:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    values = np.asarray(values, dtype=np.float32)
    if values.size and float(values.min()) < 0:
        raise ValueError("quantize codes non-negative values (probabilities); got a negative value")
    dtype = _DTYPES[bits]
    levels = np.iinfo(dtype).max
    if per_row:
        if values.ndim < 1:
            raise ValueError("per_row needs at least one axis")
        rows = values.reshape(values.shape[0], -1)
        scale = rows.max(axis=1) if rows.size else np.zeros(values.shape[0], np.float32)
        divisor = np.where(scale > 0, scale, 1).reshape((-1,) + (1,) * (values.ndim - 1))
        normalised = values / divisor.astype(np.float32)
        scale = scale.astype(np.float32)
    else:
        scale = float(values.max()) if values.size else 0.0
        if scale <= 0:
            return QuantizedArray(np.zeros(values.shape, dtype), 0.0, float(gamma))
        normalised = values / np.float32(scale)
    if gamma != 1.0:
        normalised = np.power(normalised, np.float32(gamma))
    codes = np.rint(normalised * np.float32(levels)).astype(dtype)
    return QuantizedArray(codes, scale, float(gamma))


def dequantize(quantized: QuantizedArray) -> np.ndarray:
    """Float32 values back from a `QuantizedArray`.

    Example:
        >>> dequantize(quantize(np.array([0.0, 0.5, 1.0]), bits=16)).round(4).tolist()
        [0.0, 0.5, 1.0]
    """
    normalised = quantized.codes.astype(np.float32) / np.float32(quantized.levels)
    if quantized.gamma != 1.0:
        normalised = np.power(normalised, np.float32(1.0 / quantized.gamma))
    scale = np.asarray(quantized.scale, dtype=np.float32)
    if scale.ndim:
        scale = scale.reshape((-1,) + (1,) * (normalised.ndim - 1))
    return normalised * scale


def downsample_max(matrix: np.ndarray, size: int) -> np.ndarray:
    """A ``[..., T, S]`` array shrunk to at most ``size x size`` by taking the maximum of each block.

    The maximum, not the mean: a thumbnail of a 2,048-token map must still show a single sharp
    line (a head that looks one token back), which averaging would wash out.

    Example:
        >>> downsample_max(np.eye(4), 2).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    matrix = np.asarray(matrix)
    rows, cols = matrix.shape[-2:]
    row_block = max(1, -(-rows // size))
    col_block = max(1, -(-cols // size))
    return block_max(matrix, row_block, col_block)


def block_max(matrix: np.ndarray, block: int, col_block: int | None = None) -> np.ndarray:
    """A ``[..., T, S]`` array shrunk by taking the maximum of each ``block x col_block`` block
    (``col_block`` defaults to ``block``); the last blocks of each axis may be shorter.

    Example:
        >>> block_max(np.arange(9).reshape(3, 3), 2).tolist()
        [[4, 5], [7, 8]]
    """
    matrix = np.asarray(matrix)
    row_block = max(1, int(block))
    col_block = row_block if col_block is None else max(1, int(col_block))
    if row_block == 1 and col_block == 1:
        return matrix
    rows, cols = matrix.shape[-2:]
    pad_rows = -rows % row_block
    pad_cols = -cols % col_block
    if pad_rows or pad_cols:
        widths = [(0, 0)] * (matrix.ndim - 2) + [(0, pad_rows), (0, pad_cols)]
        matrix = np.pad(matrix, widths)  # zeros: never larger than a block's maximum of values >= 0
    shape = matrix.shape[:-2] + (
        matrix.shape[-2] // row_block,
        row_block,
        matrix.shape[-1] // col_block,
        col_block,
    )
    return matrix.reshape(shape).max(axis=(-3, -1))
