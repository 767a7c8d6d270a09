"""Which matrix product the engine's programs use: the CPU kernel where it is faster, XLA's dot
otherwise.

The engine turns the kernel on for its compiled programs (`enabled`); the model's layers then
route their products through `product` / `dense_product`, which pick the kernel for

- a few rows (a decode step: one token per sequence), every weight layout and type;
- many rows (a prompt) times float weights stored ``[in, out]``: the kernel's GEMM widens
  16-bit weights one panel at a time, where XLA converts the whole matrix first, and multiplies
  bfloat16 rows by bfloat16 weights on AMX tiles where the CPU has them;

and fall back to the layer's own call for everything else (LoRA, biases, int8 prompts, which
keep Keras' own int8 arithmetic).

On a GPU the engine's layout wraps the weights that the GPU decode kernels stream
(`kerasllm_widget.kernels.gpu`) as `StreamedKernel` (stored ``[out, in]``): `product` and
`swiglu` hand decode-sized products of those to the kernels and give every other product of
them (a prompt) to XLA's dot.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import keras
from keras import ops

from kerasllm_widget.kernels import cpu, gpu

__all__ = [
    "MAX_KERNEL_ROWS",
    "QuantizedKernel",
    "StreamedKernel",
    "dense_product",
    "enabled",
    "for_rows",
    "gpu_enabled",
    "off_notice",
    "plain_dense",
    "product",
    "swiglu",
]

# Above this many rows (batch x tokens) a product is a matrix-matrix product: the kernel's
# row-at-a-time paths would read the weights once per eight rows, so only its GEMM (float
# weights stored [in, out]) takes them; other layouts and int8 go to XLA.
MAX_KERNEL_ROWS = 8


class QuantizedKernel(NamedTuple):
    """int8 weights stored ``[out, in]`` and a float32 multiplier per output: the layout the CPU
    kernel multiplies in integers (see `kerasllm_widget.kernels.cpu`)."""

    kernel: Any
    scale: Any


class StreamedKernel(NamedTuple):
    """A float weight stored ``[out, in]`` whose decode-sized products the GPU decode kernels
    take (`kerasllm_widget.kernels.gpu`); larger products of it are XLA's."""

    kernel: Any


def _wanted() -> bool:
    """JAX runs on the CPU and the model is not laid out by a `keras.distribution` (the kernel
    has no sharding rule): where the engine's programs would use the kernel."""
    return jax.default_backend() == "cpu" and keras.distribution.distribution() is None


def enabled() -> bool:
    """Whether the engine's programs should use the CPU kernel: it is wanted here (JAX on the
    CPU, no `keras.distribution`) and it builds here (see `kerasllm_widget.kernels.cpu`)."""
    return _wanted() and cpu.available()


def off_notice() -> str:
    """What the chat status line says when the engine would use the CPU kernel here but cannot
    (why, and what to install); "" on an accelerator, another backend, or with the kernel on.

    Example:
        >>> off_notice()  # doctest: +SKIP
        ''
    """
    return cpu.notice() if keras.backend.backend() == "jax" and _wanted() else ""


def gpu_enabled() -> bool:
    """Whether the engine's decode programs should use the GPU decode kernels: JAX runs on a
    CUDA GPU, the model is not laid out by a `keras.distribution` (a Pallas call has no sharding
    rule), and they are turned on (see `kerasllm_widget.kernels.gpu.available`)."""
    return keras.distribution.distribution() is None and gpu.available()


def plain_dense(dense, mode: str | None = None) -> bool:
    """A `Dense` whose product is its kernel alone: no bias, no LoRA, and quantization ``mode``
    (None: a float kernel; ``"int8"``: Keras ``quantize("int8")``). Such kernels can be merged
    with their neighbours' or handed to the CPU kernel."""
    return (
        getattr(dense, "quantization_mode", None) == mode
        and not getattr(dense, "lora_enabled", False)
        and getattr(dense, "bias", None) is None
    )


def _rows(x) -> int:
    return math.prod(x.shape[:-1])


def _kernel_takes(x, w, transposed: bool) -> bool:
    """Whether the kernel is the faster product for ``x`` rows times ``w``: always for a few
    rows; for more, only float weights stored ``[in, out]`` (its GEMM)."""
    if _rows(x) <= MAX_KERNEL_ROWS:
        return True
    return not transposed and w.dtype in _GEMM_WEIGHT_TYPES


_GEMM_WEIGHT_TYPES = ("float32", "bfloat16", "float16")


def product(x, w, *, scale=None, transposed: bool = False, kernels: bool = False):
    """``x @ w`` (``x @ w.T`` when ``transposed``) times ``scale`` per output, through the
    kernel when ``kernels`` is on and it suits the shapes (see the module docstring). ``w``
    may be a `QuantizedKernel`."""
    if isinstance(w, QuantizedKernel):
        w, scale, transposed = w.kernel, w.scale, True
    if isinstance(w, StreamedKernel):
        w, transposed = ops.convert_to_tensor(w.kernel), True
        if scale is None and gpu.takes(_rows(x), *w.shape):
            return gpu.matvec(x, w)
    w = ops.convert_to_tensor(w)
    if kernels and _kernel_takes(x, w, transposed):
        return cpu.matvec(x, w, scale, transposed=transposed)
    w = ops.cast(w, x.dtype)
    y = ops.einsum("...k,nk->...n", x, w) if transposed else ops.matmul(x, w)
    return y if scale is None else ops.cast(y * scale, x.dtype)


def swiglu(x, gate_up, width: int, *, kernels: bool = False):
    """``silu(gate) * up`` of ``x`` times the gate and up kernels side by side (``gate_up``:
    ``[in, 2 * width]``, or a `StreamedKernel` ``[2 * width, in]`` whose decode-sized product
    and activation the GPU kernel does in one pass)."""
    if isinstance(gate_up, StreamedKernel) and gpu.takes(_rows(x), width, x.shape[-1]):
        return gpu.gate_up_silu(x, ops.convert_to_tensor(gate_up.kernel))
    both = product(x, gate_up, kernels=kernels)
    return ops.silu(both[..., :width]) * both[..., width:]


def for_rows(fused: dict, x, kernels: bool) -> dict:
    """The engine's derived kernels that suit ``x``: int8 `QuantizedKernel` copies exist only for
    the CPU kernel's decode steps; a prompt (more rows) uses the layers' own int8 path."""
    if kernels and _rows(x) <= MAX_KERNEL_ROWS:
        return fused

    def quantized(value) -> bool:
        leaves = jax.tree_util.tree_leaves(value, is_leaf=lambda n: isinstance(n, QuantizedKernel))
        return any(isinstance(leaf, QuantizedKernel) for leaf in leaves)

    return {name: value for name, value in fused.items() if not quantized(value)}


def dense_product(dense, x, *, kernels: bool = False):
    """``dense(x)`` for a Keras `Dense` layer, through the kernel for a plain float kernel or an
    int8-quantized one (``kernel / kernel_scale``) when ``kernels`` allows it. A bias, LoRA or
    another quantization mode keeps the layer's own call."""
    if not kernels:
        return dense(x)
    if plain_dense(dense, "int8") and _rows(x) <= MAX_KERNEL_ROWS:
        scale = 1.0 / ops.cast(dense.kernel_scale, "float32")
        return cpu.matvec(x, ops.convert_to_tensor(dense._kernel), scale)
    if plain_dense(dense):
        kernel = ops.convert_to_tensor(dense.kernel)
        if _kernel_takes(x, kernel, transposed=False):
            return cpu.matvec(x, kernel)
    return dense(x)
