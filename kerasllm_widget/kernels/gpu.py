"""GPU decode kernels: the weight-streaming matrix products of a decode step, in Pallas (Triton).

A decode step multiplies a few rows (one token per sequence) through every weight matrix, so it
costs reading the weights once. XLA compiles these products, too small for a GEMM library call,
as multiply+reduce fusions; with them a Llama-3.2-1B-shaped bfloat16 decode step on an H200 ran
at 52% of the memory bound (1,005 tok/s at batch 1). These kernels stream each weight once,
stored ``[out, in]`` (each output's weights contiguous), in wide loads pipelined across the
reduction:

- `matvec`: ``x [..., K] @ w.T`` for ``w [N, K]`` (q/k/v, attention output, down, the tied
  output projection read in place);
- `gate_up_silu`: ``silu(x @ gate.T) * (x @ up.T)`` for the gate and up kernels stored side by
  side ``[2 * I, K]``, the SwiGLU product and its activation in one pass (the ``[.., 2 * I]``
  intermediate never reaches memory).

One program computes ``block_n`` outputs for every row. At one row it multiplies and reduces in
float32 registers; at two to `MAX_ROWS` rows the rows are padded to 16 for the tensor cores'
smallest product (the padding costs arithmetic, not memory).

`available` says whether the engine uses them: a CUDA GPU through JAX, with
``KERASLLM_GPU_KERNELS=1`` until they have been timed ahead of XLA on a GPU. Elsewhere they run
in Pallas' interpreter (slowly: the tests use it to check them against the plain products on a
CPU).

Example:
    >>> import jax.numpy as jnp
    >>> from kerasllm_widget.kernels import gpu
    >>> y = gpu.matvec(jnp.ones((1, 256)), jnp.ones((64, 256)))
    >>> y.shape, float(y[0, 0])
    ((1, 64), 256.0)
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

__all__ = [
    "MAX_ROWS",
    "STREAMED",
    "Tiling",
    "available",
    "gate_up_silu",
    "matvec",
    "takes",
    "tiling",
]

# Rows (batch x tokens) the kernels take: a decode step's batch. More rows are a prompt, a
# matrix-matrix product that XLA's GEMM does well.
MAX_ROWS = 16
# Which of a layer's products the engine's layout hands to the kernels ("attention": q/k/v and
# the attention output; "lm_head": the tied output projection).
STREAMED = frozenset({"attention", "gate_up", "down", "lm_head"})
# Programs wanted per product: two for each of an H100's or H200's 132 multiprocessors.
_PROGRAMS = 264
# The tensor cores' smallest product has 16 rows: more than one row is padded to it.
_DOT_ROWS = 16
# Pallas' matrix product inside a Triton kernel: `pallas.triton.dot` from JAX 0.7 on
# (`pallas.dot` is deprecated there); JAX 0.6 has only `pallas.dot`.
_dot = getattr(plgpu, "dot", None) or pl.dot


class Tiling(NamedTuple):
    """How one product is cut up: ``block_n`` outputs per program, ``block_k`` inputs per
    pipelined load, and Triton's ``num_warps`` and ``num_stages``."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def available() -> bool:
    """Whether the engine uses the kernels: JAX runs on a CUDA GPU and they are turned on with
    ``KERASLLM_GPU_KERNELS=1``. Off by default until `bench/gpu_kernels.py` and
    ``bench/generate.py --gpu`` have timed them ahead of XLA's products on a GPU."""
    return os.environ.get("KERASLLM_GPU_KERNELS", "0") == "1" and _cuda()


@functools.cache
def _cuda() -> bool:
    try:
        device = jax.devices()[0]
    except RuntimeError:  # no backend could start
        return False
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return jax.default_backend() == "gpu" and "rocm" not in version


def tiling(rows: int, n: int, k: int) -> Tiling | None:
    """The tiling for ``rows`` times a ``[n, k]`` weight, or None when no tiling divides the
    shapes (the caller keeps XLA's product). The widest block of outputs that still gives every
    multiprocessor two programs (`_PROGRAMS`), and blocks of inputs short enough for four
    pipelined loads per program. A first guess until `bench/gpu_kernels.py` has swept tilings
    on a GPU.

    Example:
        >>> tiling(1, 2048, 8192)
        Tiling(block_n=8, block_k=1024, num_warps=4, num_stages=3)
    """
    widths = (32, 16) if rows > 1 else (16, 8)  # the tensor cores' product needs 16 outputs
    block_n = next((b for b in widths if n % b == 0 and n // b >= _PROGRAMS), 0)
    block_n = block_n or next((b for b in reversed(widths) if n % b == 0), 0)
    block_k = next((b for b in (1024, 512, 256, 128) if k % b == 0 and k // b >= 4), 0)
    block_k = block_k or next((b for b in (64, 32, 16) if k % b == 0), 0)
    if not block_n or not block_k:
        return None
    return Tiling(block_n, block_k, 4, 3)


def takes(rows: int, n: int, k: int) -> bool:
    """Whether `matvec` takes ``rows`` times a ``[n, k]`` weight (a decode-sized product whose
    shapes some tiling divides)."""
    return 1 <= rows <= MAX_ROWS and tiling(rows, n, k) is not None


def _partial_product(x, w):
    """``x [R, bk] @ w [bn, bk].T`` in float32: multiply and reduce for one row, the tensor
    cores for more (``R`` is then padded to 16)."""
    if x.shape[0] == 1:
        return jnp.sum(w.astype(jnp.float32) * x.astype(jnp.float32), axis=1)[None, :]
    return _dot(x.astype(w.dtype), w, trans_b=True)


def _matvec_kernel(x_ref, w_ref, o_ref, *, block_k: int):
    rows = x_ref.shape[0]
    block_n, k = w_ref.shape

    def body(i, acc):
        cols = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        return acc + _partial_product(x_ref[:, cols], w_ref[:, cols])

    acc = jax.lax.fori_loop(0, k // block_k, body, jnp.zeros((rows, block_n), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def _gate_up_kernel(x_ref, gate_ref, up_ref, o_ref, *, block_k: int):
    rows = x_ref.shape[0]
    block_n, k = gate_ref.shape

    def body(i, carry):
        gate, up = carry
        cols = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        x = x_ref[:, cols]
        return gate + _partial_product(x, gate_ref[:, cols]), up + _partial_product(
            x, up_ref[:, cols]
        )

    zeros = jnp.zeros((rows, block_n), jnp.float32)
    gate, up = jax.lax.fori_loop(0, k // block_k, body, (zeros, zeros))
    o_ref[...] = (jax.nn.silu(gate) * up).astype(o_ref.dtype)


def _rows_for_kernel(x):
    """``x [..., K]`` as ``[R, K]`` rows, padded to the tensor cores' 16 when there is more than
    one; and the count of real rows."""
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    if 1 < count < _DOT_ROWS:
        rows = jnp.pad(rows, ((0, _DOT_ROWS - count), (0, 0)))
    return rows, count


def _check(name: str, x, w, n: int) -> Tiling:
    rows = x.reshape(-1, x.shape[-1]).shape[0]
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(
            f"{name}: x has {x.shape[-1]} features but the weight is {tuple(w.shape)}; "
            "expected [outputs, features]"
        )
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"{name}: x has {rows} rows; the kernel takes 1 to {MAX_ROWS}")
    found = tiling(rows, n, w.shape[1])
    if found is None:
        raise ValueError(f"{name}: no tiling divides a [{n}, {w.shape[1]}] weight")
    return found


def matvec(x, w, *, out_dtype=None, tile: Tiling | None = None, interpret: bool | None = None):
    """``x [..., K] @ w.T`` for ``w [N, K]`` (16-bit or float32), accumulated in float32, for a
    few rows of ``x`` (1 to `MAX_ROWS`); returns ``[..., N]`` in ``out_dtype`` (default: x's).
    ``tile`` overrides the `tiling` (benchmarks); ``interpret`` runs Pallas' interpreter
    (default: off a GPU)."""
    n, k = w.shape[0], x.shape[-1]
    tile = tile or _check("matvec", x, w, n)
    rows, count = _rows_for_kernel(x)
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    y = pl.pallas_call(
        functools.partial(_matvec_kernel, block_k=tile.block_k),
        out_shape=jax.ShapeDtypeStruct((rows.shape[0], n), out_dtype),
        grid=(n // tile.block_n,),
        in_specs=[
            pl.BlockSpec((rows.shape[0], k), lambda i: (0, 0)),
            pl.BlockSpec((tile.block_n, k), lambda i: (i, 0)),
        ],
        out_specs=pl.BlockSpec((rows.shape[0], tile.block_n), lambda i: (0, i)),
        compiler_params=_compiler_params(tile),
        interpret=_interpret(interpret),
        name="kerasllm_matvec",
    )(rows, w)
    return y[:count].reshape(*x.shape[:-1], n)


def gate_up_silu(x, w, *, tile: Tiling | None = None, interpret: bool | None = None):
    """``silu(x @ gate.T) * (x @ up.T)`` for ``w = [gate; up]`` stored ``[2 * I, K]``, in one
    pass over the weights; returns ``[..., I]`` in x's dtype (activation in float32)."""
    width, k = w.shape[0] // 2, x.shape[-1]
    if w.shape[0] % 2:
        raise ValueError(f"gate_up_silu: the weight {tuple(w.shape)} has an odd number of rows")
    tile = tile or _check("gate_up_silu", x, w, width)
    rows, count = _rows_for_kernel(x)
    halves = width // tile.block_n
    y = pl.pallas_call(
        functools.partial(_gate_up_kernel, block_k=tile.block_k),
        out_shape=jax.ShapeDtypeStruct((rows.shape[0], width), x.dtype),
        grid=(halves,),
        in_specs=[
            pl.BlockSpec((rows.shape[0], k), lambda i: (0, 0)),
            pl.BlockSpec((tile.block_n, k), lambda i: (i, 0)),
            pl.BlockSpec((tile.block_n, k), lambda i: (i + halves, 0)),
        ],
        out_specs=pl.BlockSpec((rows.shape[0], tile.block_n), lambda i: (0, i)),
        compiler_params=_compiler_params(tile),
        interpret=_interpret(interpret),
        name="kerasllm_gate_up_silu",
    )(rows, w, w)
    return y[:count].reshape(*x.shape[:-1], width)


def _interpret(interpret: bool | None) -> bool:
    return jax.default_backend() != "gpu" if interpret is None else interpret


def _compiler_params(tile: Tiling):
    return plgpu.CompilerParams(num_warps=tile.num_warps, num_stages=tile.num_stages)
