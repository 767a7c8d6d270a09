"""XLA compilation: JAX's persistent cache (a restarted kernel compiles nothing again) and the
per-program compiler options of the decode program."""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import jax
import numpy as np

from kerasllm_widget._paths import cache_root

__all__ = ["decode_compiler_options", "default_cache_dir", "enable_compilation_cache"]


def default_cache_dir() -> Path:
    """Where compiled programs are kept between kernels: ``$XDG_CACHE_HOME/kerasllm_widget/jax``."""
    return cache_root() / "jax"


_compilation_cache_lock = threading.Lock()
_compilation_cache_done = False


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turns JAX's persistent compilation cache on, so a restarted kernel skips compile time.

    Leaves a cache directory the user configured alone. Set ``KERASLLM_COMPILATION_CACHE=0`` to
    keep it off. Returns the directory in use (None when off).

    Example:
        >>> enable_compilation_cache()  # doctest: +SKIP
        PosixPath('/home/me/.cache/kerasllm_widget/jax')
    """
    global _compilation_cache_done
    with _compilation_cache_lock:
        current = jax.config.jax_compilation_cache_dir
        if current:
            return Path(current)
        if os.environ.get("KERASLLM_COMPILATION_CACHE", "1") == "0":
            return None
        folder = Path(path) if path is not None else default_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None  # a read-only home: compile every time rather than fail
        jax.config.update("jax_compilation_cache_dir", str(folder))
        # Our programs take seconds to compile; cache them all, however small.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        _compilation_cache_done = True
        return folder


# On a GPU the decode loop runs as CUDA graphs, its while loop and conditionals included: a step
# at batch 1 is some 280 small kernels, and launched one by one the device waits on the host for
# about 40% of the step (H200, Llama-3.2-1B shape: 636 -> 701 tok/s at batch 1, 6,909 -> 7,663 at
# batch 8). Only the decode program: prefill's larger kernels gain nothing and it compiles slower.
_GPU_DECODE_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
}


# On a CPU, XLA hands reductions to YNNPACK ("library fusions"); at one token per step each of
# those calls costs more than the reduction (SmolLM2: 72 calls, about a third of a step). The
# decode program keeps only YNNPACK's dot products; its reductions stay XLA loops.
_CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _cpu_options_supported(options: tuple) -> bool:
    """Whether this jaxlib accepts ``options`` (the option is experimental and may go away)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except Exception:  # an unknown option or value: compile with the defaults instead
        return False
    return True


def decode_compiler_options(backend: str | None = None) -> dict | None:
    """XLA options for the compiled decode program on ``backend`` (the default backend).

    Example:
        >>> sorted(decode_compiler_options("gpu"))
        ['xla_gpu_enable_command_buffer']
    """
    backend = backend or jax.default_backend()
    if backend == "gpu":
        return dict(_GPU_DECODE_OPTIONS)
    if backend == "cpu" and _cpu_options_supported(tuple(_CPU_DECODE_OPTIONS.items())):
        return dict(_CPU_DECODE_OPTIONS)
    return None
