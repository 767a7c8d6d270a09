"""The CPU decode kernel (`decode.cc`): built on first use, registered with XLA, called from jit.

XLA's CPU dot reads float32 weights at about half this machine class's memory bandwidth when one
token is multiplied through a matrix, and int8, float16 and bfloat16 weights slower still (it
widens the whole matrix first). `matvec` hands those products to a small C++ kernel that streams
the weights once. It is compiled with the machine's C++ compiler against the XLA FFI headers that
jaxlib ships (`jax.ffi.include_dir()`), for this machine's instruction set (``-march=native``:
AVX2, AVX-512 with VNNI, and AMX tiles for bfloat16 prompts, where the CPU has them),
into the user's cache folder, keyed by the source, jaxlib version and CPU, so it is built once
per machine (several seconds). Without a compiler, or with ``KERASLLM_CPU_KERNELS=0``, `available`
is False and callers keep XLA's dot. Unless it was turned off on purpose, a one-time warning says
why and what to install (`notice`), since decoding is then slower.

A package build step is not used for this on purpose: the kernel must be compiled against the
jaxlib the user actually has and for the CPU it runs on, and both can change after install.

Example:
    >>> import jax.numpy as jnp
    >>> from kerasllm_widget.kernels import cpu
    >>> if cpu.available():  # doctest: +SKIP
    ...     y = cpu.matvec(jnp.ones((1, 8)), jnp.ones((8, 4)))
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kerasllm_widget._paths import cache_root

__all__ = [
    "ATTENTION_TARGET",
    "TAKE_ROWS_TARGET",
    "TARGET",
    "TOP_K_TARGET",
    "attention",
    "available",
    "compiler_version",
    "cpu_signature",
    "matvec",
    "notice",
    "reason_unavailable",
    "take_rows",
    "top_k",
]

log = logging.getLogger(__name__)

TARGET = "kerasllm_matvec"
ATTENTION_TARGET = "kerasllm_decode_attention"
TAKE_ROWS_TARGET = "kerasllm_take_rows"
TOP_K_TARGET = "kerasllm_top_k"
# XLA target name -> the handler symbol `decode.cc` exports for it.
_SYMBOLS = {
    TARGET: "KerasLLMMatVec",
    ATTENTION_TARGET: "KerasLLMAttention",
    TAKE_ROWS_TARGET: "KerasLLMTakeRows",
    TOP_K_TARGET: "KerasLLMTopK",
}
_SOURCE = Path(__file__).with_name("decode.cc")
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]

_lock = threading.Lock()
# "ok": bool, "why": str, "fix": str (what to install; "" when turned off on purpose),
# "library": ctypes.CDLL
_state: dict = {}
_COMPILER_FIX = (
    "install a C++17 compiler (Debian/Ubuntu: `apt-get install g++`; macOS: "
    "`xcode-select --install`; Windows: not supported) or point CXX at one, then restart the kernel"
)


def cpu_signature(cpuinfo: str | None, machine: str) -> str:
    """What ``-march=native`` compiles for, from the text of ``/proc/cpuinfo`` (None where it
    cannot be read) and ``platform.machine()``: the CPU's model and feature lines, whatever the
    architecture calls them (x86 "flags", aarch64 "Features", POWER "cpu", RISC-V "isa"), or the
    machine and a hash of the whole text where it has none of them. Part of the kernel's cache
    key, so that a home folder shared between machines never loads a build for another CPU.

    Example:
        >>> cpu_signature("CPU part : 0xd0c\\nFeatures : fp asimd", "aarch64").splitlines()
        ['aarch64', 'CPU part : 0xd0c', 'Features : fp asimd']
    """
    if not cpuinfo:
        return machine
    keys = ("model name", "flags", "features", "cpu model", "cpu", "isa", "vendor_id", "cpu part")
    lines = {
        " ".join(line.split())
        for line in cpuinfo.splitlines()
        if line.split(":")[0].strip().lower() in keys
    }
    if not any(
        line.split(":")[0].strip().lower() in ("flags", "features", "isa") for line in lines
    ):
        # Clock rates change from one reading to the next: hash the rest.
        steady = [
            ln
            for ln in cpuinfo.splitlines()
            if not ("mhz" in ln.lower() or "bogomips" in ln.lower())
        ]
        lines.add(hashlib.sha256("\n".join(steady).encode()).hexdigest()[:16])
    return "\n".join([machine, *sorted(lines)])


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = None
    return cpu_signature(text, platform.machine())


def compiler_version(compiler: str) -> str:
    """The first line of ``compiler --version`` ("" when it does not answer): a compiler
    upgrade may change the code it makes, so it is part of the kernel's cache key too."""
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (result.stdout.strip().splitlines() or [""])[0]


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _library_path(compiler: str) -> Path:
    digest = hashlib.sha256()
    for part in (
        _SOURCE.read_bytes(),
        jax.lib.__version__.encode(),
        _cpu_signature().encode(),
        compiler_version(compiler).encode(),
    ):
        digest.update(part)
    digest.update(" ".join([compiler, *_FLAGS]).encode())
    return cache_root() / "kernels" / f"decode-{digest.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        command = [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), str(_SOURCE), "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(partial, target)  # atomic: another process may be building the same file


def _load() -> None:
    if os.environ.get("KERASLLM_CPU_KERNELS", "1") == "0":
        _state.update(ok=False, why="turned off with KERASLLM_CPU_KERNELS=0")
        return
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        _state.update(
            ok=False,
            why=f"no kernel for {platform.machine()} processors",
            fix="a machine with an x86-64 or ARM64 processor runs it",
        )
        return
    compiler = _compiler()
    if compiler is None:
        _state.update(ok=False, why="no C++ compiler found", fix=_COMPILER_FIX)
        return
    try:
        path = _library_path(compiler)
        if not path.exists():
            _build(compiler, path)
        library = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in _SYMBOLS.items():
            handler = jax.ffi.pycapsule(getattr(library, symbol))
            jax.ffi.register_ffi_target(target, handler, platform="cpu")
    except Exception as error:  # a failed build must not stop generation: XLA's dot remains
        _state.update(
            ok=False,
            why=f"the kernel could not be built or loaded: {error}",
            fix=f"{_COMPILER_FIX}; set KERASLLM_CPU_KERNELS=0 to silence this",
        )
        return
    _state.update(ok=True, why="", library=library)


def available() -> bool:
    """Whether `matvec` can run here (builds and registers the kernel on the first call)."""
    with _lock:
        if not _state:
            _load()
            if not _state["ok"]:
                log.info("CPU decode kernel not used: %s; XLA's dot is used instead", _state["why"])
                if _state.get("fix"):
                    # Once per process (the state is kept): the user should learn why decoding
                    # is slower without reading logs, and not on every reply.
                    warnings.warn(_notice_text(), RuntimeWarning, stacklevel=3)
        return _state["ok"]


def reason_unavailable() -> str:
    """Why `available` is False ("" when it is True)."""
    available()
    return _state["why"]


def notice() -> str:
    """A sentence for the user when the kernel is off for a reason they did not choose: why, and
    what to install ("" when it runs, or was turned off with ``KERASLLM_CPU_KERNELS=0``).

    Example:
        >>> notice()  # doctest: +SKIP
        'Native CPU decode kernel off: no C++ compiler found. Decoding uses XLA's slower ...'
    """
    available()
    return _notice_text()


def _notice_text() -> str:
    if _state["ok"] or not _state.get("fix"):
        return ""
    return (
        f"Native CPU decode kernel off: {_state['why']}. Decoding uses XLA's slower matrix "
        f"products; to speed it up, {_state['fix']}."
    )


def _require() -> None:
    if not available():
        raise RuntimeError(f"the CPU decode kernel is not available: {reason_unavailable()}")


def matvec(x, w, scale=None, *, transposed: bool = False, out_dtype=None):
    """``x [..., K] @ w`` through the kernel: ``w`` is ``[K, N]`` (``[N, K]`` when
    ``transposed``) in float32, bfloat16, float16 or int8, and ``scale`` an optional float32
    ``[N]`` multiplier per output (int8 weights). Accumulates in float32; returns ``[..., N]`` in
    ``out_dtype`` (default: x's dtype). Meant for a few rows of x (the decode batch).
    """
    _require()
    k = x.shape[-1]
    n = w.shape[0] if transposed else w.shape[1]
    if (w.shape[1] if transposed else w.shape[0]) != k:
        raise ValueError(f"matvec: x has {k} features but w is {tuple(w.shape)}")
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    rows = x.reshape(-1, k)
    if scale is None:
        scale = jnp.zeros((0,), jnp.float32)
    else:
        scale = jnp.asarray(scale, jnp.float32).reshape(n)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows.shape[0], n), out_dtype))
    y = call(rows, w, scale, transposed=np.int64(bool(transposed)))
    return y.reshape(*x.shape[:-1], n)


def attention(query, keys, values, valid, scale: float):
    """One query per sequence against a key/value cache: ``query [B, H, D]``, ``keys`` and
    ``values [B, S, kv_heads, D]`` (query head ``h`` reads kv head ``h // (H // kv_heads)``),
    ``valid [B, S]`` bool (slots that take part). Softmax of ``scale * q.k`` over the valid
    slots, in float32; returns ``[B, H, D]`` in the query's dtype (zeros for a sequence with no
    valid slot)."""
    _require()
    call = jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct(query.shape, query.dtype))
    return call(query, keys, values, valid.astype(bool), scale=np.float32(scale))


def take_rows(table, ids):
    """``table[ids]`` for a ``[V, D]`` table of any dtype and integer ``ids`` of any shape,
    copied row by row (ids outside the table are clamped to it); returns ``[*ids.shape, D]`` in
    the table's dtype. XLA on a CPU converts or copies a whole 16-bit table to gather from it."""
    _require()
    ids = jnp.asarray(ids)
    flat = ids.reshape(-1).astype(jnp.int32)
    call = jax.ffi.ffi_call(
        TAKE_ROWS_TARGET, jax.ShapeDtypeStruct((flat.shape[0], table.shape[1]), table.dtype)
    )
    return call(table, flat).reshape(*ids.shape, table.shape[1])


def top_k(x, k: int):
    """`jax.lax.top_k` of float32 ``x [..., V]`` along its last axis: the ``k`` largest values,
    best first (ties: the lower index first) and their int32 indices, in one pass over each row.
    XLA on a CPU sorts the row for a top-k of more than a few elements."""
    _require()
    x = jnp.asarray(x, jnp.float32)
    if not 0 <= k <= x.shape[-1]:
        raise ValueError(f"top_k: k={k} is not between 0 and the row length {x.shape[-1]}")
    rows = x.reshape(-1, x.shape[-1])
    call = jax.ffi.ffi_call(
        TOP_K_TARGET,
        (
            jax.ShapeDtypeStruct((rows.shape[0], k), jnp.float32),
            jax.ShapeDtypeStruct((rows.shape[0], k), jnp.int32),
        ),
    )
    values, ids = call(rows)
    return values.reshape(*x.shape[:-1], k), ids.reshape(*x.shape[:-1], k)
