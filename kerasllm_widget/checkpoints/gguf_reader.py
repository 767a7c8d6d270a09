"""Reading the GGUF file format: header, metadata, tensor infos, and tensor rows dequantized.

GGUF (llama.cpp's format, v2 and v3, little-endian) is a header, ``key: value`` metadata, a table
of tensor infos (name, dims, GGML type, offset) and then the tensors' bytes, each aligned.
`read_gguf` returns the metadata and where each tensor lies; `read_tensor_rows` reads a range of one
tensor's rows and dequantizes them to float32. What the metadata and tensors mean for a llama
model is the business of `gguf_config`, `gguf_tensor_names` and `gguf_tokenizer`.

The metadata is parsed here rather than with ``gguf.GGUFReader``: the reader builds a numpy view
for every string in the file, which takes about 5 s for SmolLM2's 49k-token vocabulary and 27 s for
Llama 3's 128k tokens and 280k merges, against well under a second for a plain parse. Tensors are
still dequantized with the ``gguf`` package (``gguf.quants.dequantize``).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np

from .checkpoint import path_exists
from .errors import CheckpointFormatError, PresetError, UnsupportedModelError

__all__ = ["RawTensor", "format_error", "read_gguf", "read_gguf_metadata", "read_tensor_rows"]

# --- Header, metadata and tensor infos ------------------------------------------------------------

_GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS

# GGUF metadata value types (gguf.GGUFValueType) and how they are packed, little-endian.
_TYPE_STRING = 8
_TYPE_ARRAY = 9
_SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_ARRAY_DTYPES = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4",
    6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8",
}  # fmt: skip
_TYPE_FLOAT32 = 6
_TYPE_BOOL = 7


class _Truncated(Exception):
    """A read ran past the end of the file."""


class _Corrupt(Exception):
    """The bytes do not follow the GGUF format."""


class _Cursor:
    """Reads GGUF's little-endian primitives from a memory map, checking every bound."""

    _U32 = struct.Struct("<I")
    _U64 = struct.Struct("<Q")

    def __init__(self, buffer: mmap.mmap, size: int) -> None:
        self.buffer = buffer
        self.size = size
        self.pos = 0

    def _need(self, count: int) -> None:
        if count < 0 or self.pos + count > self.size:
            raise _Truncated(f"needed {count} bytes at offset {self.pos}, the file has {self.size}")

    def u32(self) -> int:
        self._need(4)
        (value,) = self._U32.unpack_from(self.buffer, self.pos)
        self.pos += 4
        return value

    def u64(self) -> int:
        self._need(8)
        (value,) = self._U64.unpack_from(self.buffer, self.pos)
        self.pos += 8
        return value

    def string(self) -> str:
        length = self.u64()
        self._need(length)
        raw = self.buffer[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _Corrupt(f"a string at offset {self.pos - length} is not UTF-8") from error

    def value(self, value_type: int) -> Any:
        if value_type == _TYPE_STRING:
            return self.string()
        if value_type == _TYPE_ARRAY:
            return self.array()
        fmt = _SCALAR_FORMATS.get(value_type)
        if fmt is None:
            raise _Corrupt(f"unknown metadata value type {value_type} at offset {self.pos - 4}")
        width = struct.calcsize(fmt)
        self._need(width)
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += width
        if value_type == _TYPE_FLOAT32:
            # float32 fields hold decimals written from config.json (1e-05, 500000.0); the shortest
            # repr of the float32 gives back that decimal instead of 9.999999747378752e-06.
            value = float(str(np.float32(value)))
        return value

    def array(self) -> list[Any]:
        item_type = self.u32()
        count = self.u64()
        if item_type == _TYPE_STRING:
            # Every string takes at least its 8-byte length: a count beyond that is garbage.
            self._need(count * 8)
            return [self.string() for _ in range(count)]
        if item_type == _TYPE_ARRAY:
            return [self.array() for _ in range(count)]
        dtype = _ARRAY_DTYPES.get(item_type)
        if dtype is None:
            raise _Corrupt(f"unknown array item type {item_type} at offset {self.pos - 12}")
        nbytes = count * np.dtype(dtype).itemsize
        self._need(nbytes)
        values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos)
        self.pos += nbytes
        if item_type == _TYPE_BOOL:
            return [bool(v) for v in values]
        return values.tolist()  # a copy: nothing may keep the map alive after close()


@dataclass(frozen=True)
class RawTensor:
    """Where one tensor's bytes lie in the file, and how to read them."""

    name: str  # llama.cpp name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # numpy order (slowest dimension first), i.e. GGUF's dims reversed
    qtype: gguf.GGMLQuantizationType
    offset: int  # absolute, in bytes from the start of the file
    nbytes: int

    @property
    def raw_shape(self) -> tuple[int, ...]:
        """The bytes as a uint8 array whose last axis holds one row, as `dequantize` expects."""
        return (*self.shape[:-1], self.nbytes // max(1, math.prod(self.shape[:-1])))


def _parse(buffer: mmap.mmap, size: int) -> tuple[dict[str, Any], dict[str, RawTensor]]:
    """Metadata and tensor locations of a GGUF (v2 or v3, little-endian)."""
    cursor = _Cursor(buffer, size)
    cursor._need(4)
    if buffer[0:4] != _GGUF_MAGIC:
        raise _Corrupt(f"it does not start with the GGUF magic bytes (found {buffer[0:4]!r})")
    cursor.pos = 4
    version = cursor.u32()
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in (2, 3):
            raise _Corrupt("it is a big-endian GGUF, which this reader does not handle")
        raise _Corrupt(f"GGUF version {version} is not supported (2 and 3 are)")
    tensor_count = cursor.u64()
    kv_count = cursor.u64()

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.u32())

    infos = []
    for _ in range(tensor_count):
        name = cursor.string()
        n_dims = cursor.u32()
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} claims {n_dims} dimensions")
        dims = [cursor.u64() for _ in range(n_dims)]
        type_id = cursor.u32()
        offset = cursor.u64()
        infos.append((name, dims, type_id, offset))

    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment is {alignment!r}, not a power of two")
    data_start = -(-cursor.pos // alignment) * alignment

    tensors: dict[str, RawTensor] = {}
    for name, dims, type_id, offset in infos:
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
        except ValueError as error:
            raise _Corrupt(f"tensor {name!r} has unknown GGML type id {type_id}") from error
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if dims[0] % block_size:
            raise _Corrupt(
                f"tensor {name!r} rows of {dims[0]} do not split into {qtype.name} blocks"
            )
        nbytes = math.prod(dims) // block_size * type_size
        start = data_start + offset
        if start + nbytes > size:
            raise _Truncated(
                f"tensor {name!r} needs bytes up to {start + nbytes}, the file ends at {size}"
            )
        tensors[name] = RawTensor(name, tuple(reversed(dims)), qtype, start, nbytes)
    return metadata, tensors


def format_error(path: Path, detail: str) -> CheckpointFormatError:
    """The error for a file that does not follow the format (``detail`` says where it broke)."""
    return CheckpointFormatError(
        f"{path} is not a readable GGUF file: it looks truncated or corrupt ({detail}). "
        "Re-download it (an interrupted download leaves a short file)."
    )


def _open(path: Path) -> tuple[mmap.mmap, int]:
    """A read-only map of the file, after checking that it exists and can hold a header."""
    if not path.is_file():
        path_exists(path)  # a symlink loop is named as one, not as "not found"
        raise PresetError(
            f"GGUF file not found: {path}. Check the path, or download the file again."
        )
    size = path.stat().st_size
    if size < 24:  # magic, version and the two counts
        raise format_error(path, f"the file is only {size} bytes long")
    with open(path, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), size


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, RawTensor]]:
    """The metadata of a GGUF file and where each of its tensors lies (by llama.cpp name).

    The file is read through a memory map that is closed again before this returns. Raises
    `PresetError` if the file does not exist and `CheckpointFormatError` if it is truncated or
    corrupt.

    Example:
        >>> metadata, tensors = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> tensors["output_norm.weight"].shape  # doctest: +SKIP
        (576,)
    """
    path = Path(path)
    buffer, size = _open(path)
    try:
        return _parse(buffer, size)
    except (_Truncated, _Corrupt, OverflowError, MemoryError) as error:
        raise format_error(path, str(error)) from error
    finally:
        buffer.close()


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a GGUF file as a dict, without reading its tensors.

    Values are Python scalars, strings and lists; float32 fields are given as the decimal they
    were written from (``1e-05``, not ``9.999999747378752e-06``).

    Example:
        >>> meta = read_gguf_metadata("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> meta["general.architecture"], len(meta["tokenizer.ggml.tokens"])  # doctest: +SKIP
        ('llama', 49152)
    """
    return read_gguf(path)[0]


# --- Reading and dequantizing tensor rows ---------------------------------------------------------


def read_tensor_rows(
    handle: BinaryIO,
    lock: threading.Lock,
    tensor: RawTensor,
    path: Path,
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Rows [start, stop) (first axis) of a tensor, read from ``handle`` and dequantized to float32.

    ``lock`` guards the handle's seek and read, so that several threads can read one file.

    Example:
        >>> with open(path, "rb") as handle:  # doctest: +SKIP
        ...     rows = read_tensor_rows(handle, threading.Lock(), tensors["token_embd.weight"], path, 0, 8)
    """
    first = tensor.shape[0]
    stop = first if stop is None else stop
    # Quantization blocks run along the last axis, so a range of the first axis is one run of
    # bytes, except in a 1-D tensor, which is read whole.
    begin, end = (start, stop) if len(tensor.shape) > 1 else (0, first)
    stride = tensor.nbytes // first
    raw = np.empty((end - begin) * stride, dtype=np.uint8)
    with lock:
        handle.seek(tensor.offset + begin * stride)
        count = handle.readinto(memoryview(raw))
    if count != raw.size:
        raise format_error(path, f"tensor {tensor.name} ends past the end of the file")
    raw = raw.reshape(
        (end - begin, *tensor.raw_shape[1:]) if len(tensor.shape) > 1 else tensor.raw_shape
    )
    try:
        array = gguf.quants.dequantize(raw, tensor.qtype)
    except NotImplementedError as error:
        raise UnsupportedModelError(
            f"{path.name}: tensor {tensor.name} is stored as {tensor.qtype.name}, which the "
            f"installed gguf package ({getattr(gguf, '__version__', '?')}) cannot "
            "dequantize; upgrade gguf or use a file of another quantization."
        ) from error
    array = array.astype(np.float32, copy=False)
    return array if len(tensor.shape) > 1 else array[start:stop]
