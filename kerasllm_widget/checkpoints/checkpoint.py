"""The one shape every checkpoint source is read into before it becomes a Keras model.

A `Checkpoint` holds the Hugging Face view of a model: its `config.json` as a dict, its tokenizer as
a `tokenizers.Tokenizer`, the tokenizer and generation configs, and a way to read its tensors one at
a time under their Hugging Face names and layouts (``model.layers.0.self_attn.q_proj.weight`` as
``[out_features, in_features]``). Safetensors folders, `hf://` repos and GGUF files all produce one,
so that conversion to Keras is written once (`checkpoints/convert.py`).
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasllm_widget.checkpoints.errors import CheckpointFormatError

# How much of one tensor is read at a time (as float32) when it is copied into a model weight.
ROW_BLOCK_BYTES = 16 * 1024 * 1024


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


def refuse_non_finite(
    rows: np.ndarray, tensor_name: str, file: str | os.PathLike, first_row: int = 0
) -> np.ndarray:
    """Returns ``rows`` (a block of one tensor from ``first_row`` on, as read), or raises if it
    holds NaN or infinity.

    Both loaders call it on every block they read, so the check costs one pass over bytes that
    are being converted anyway (about 1-5 ms per 16 MiB block in float32, bfloat16 or float16),
    not a second read of the model. A non-finite weight would otherwise load silently and turn
    every logit into NaN.

    Example:
        >>> refuse_non_finite(np.array([1.0, np.nan]), "model.norm.weight", "model.safetensors")
        Traceback (most recent call last):
        ...
        kerasllm_widget.checkpoints.errors.CheckpointFormatError: model.safetensors: tensor 'model.norm.weight' holds NaN or infinite values (NaN at [1]). ...
    """
    finite = np.isfinite(rows)
    if finite.all():
        return rows
    flat = int(np.argmin(finite.reshape(-1)))
    kind = "NaN" if np.isnan(rows.reshape(-1)[flat]) else "infinity"
    where = [int(i) for i in np.unravel_index(flat, rows.shape)]
    if where:
        where[0] += first_row
    raise CheckpointFormatError(
        f"{file}: tensor {tensor_name!r} holds NaN or infinite values ({kind} at {where}). A "
        "model with such a weight gives NaN for every logit. The file "
        "is corrupt, or was saved from a model whose training diverged: re-download the "
        "checkpoint, or re-export it from a model whose weights are finite."
    )


def symlink_loop_error(path: str | os.PathLike) -> CheckpointFormatError:
    """The error for a path whose symbolic links lead back to themselves."""
    return CheckpointFormatError(
        f"{path}: is a symlink loop (following its symbolic links leads back to a link already "
        "followed), so there is no file behind it to read. Replace the link with the file itself, "
        "or point it at the real file (`ls -l` shows where each link points)."
    )


def read_text_file(path: str | os.PathLike) -> str:
    """A checkpoint's text file (JSON, Jinja), which Hugging Face writes as UTF-8; other bytes
    raise an error naming the file and the first bad byte instead of a bare UnicodeDecodeError.

    Example:
        >>> read_text_file("my-model/tokenizer.json")[:1]  # doctest: +SKIP
        '{'
    """
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointFormatError(
            f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}: "
            f"{error.reason}). Hugging Face writes {os.path.basename(path)} as UTF-8; this copy is "
            "corrupt or was re-saved in another encoding. Re-download it (or re-save it as UTF-8)."
        ) from None


def path_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists, following links; a symlink loop raises instead of reading as
    "missing" (``os.path.exists`` says False, which turned loops into "not found"/"truncated").

    Example:
        >>> path_exists("/nonexistent/config.json")
        False
    """
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise symlink_loop_error(path) from None
        return False
    return True


@dataclass
class TensorInfo:
    """What a checkpoint says about one tensor before it is read."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # as written in the file: "F32", "BF16", "F16", "Q4_1", ...


@dataclass
class Checkpoint:
    """A model checkpoint, seen the way Hugging Face transformers sees it.

    Example:
        >>> ckpt = load_checkpoint("smollm2-135m-instruct")  # doctest: +SKIP
        >>> ckpt.config["model_type"]  # doctest: +SKIP
        'llama'
    """

    name: str  # what the user asked for, for messages ("hf://org/name", a path, a built-in name)
    source: str  # where it was read from (a folder or a file path)
    config: dict[str, Any]
    tensor_infos: dict[str, TensorInfo]
    read_tensor: Callable[[str], np.ndarray]  # HF name -> array in HF layout, file dtype or float32
    tokenizer_json: str | None = None  # the tokenizer.json text (Hugging Face `tokenizers` format)
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    generation_config: dict[str, Any] = field(default_factory=dict)
    # The source's model card metadata (licence, ...; see `model_card.card_metadata`) and the Hub
    # repo it came from, if any: a model saved from it names both in its own card.
    card: dict[str, Any] = field(default_factory=dict)
    hub_repo: str | None = None
    close: Callable[[], None] = lambda: None
    # HF name, start, stop -> rows [start, stop) along the first axis, as read_tensor gives them.
    # None: the source reads whole tensors only.
    read_row_range: Callable[[str, int, int], np.ndarray] | None = None

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yields ``(name, array)`` one tensor at a time, so that only one is in memory."""
        for name in self.tensor_infos:
            yield name, self.read_tensor(name)

    def row_blocks(
        self, name: str, max_bytes: int = ROW_BLOCK_BYTES
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(first_row, rows)`` pieces of one tensor of about ``max_bytes`` (as float32).

        A loader copies each piece into its destination and drops it, so that a large tensor
        (the embedding) is never held twice in host memory.

        Example:
            >>> ckpt = load_checkpoint("smollm2-135m-instruct")  # doctest: +SKIP
            >>> [(start, rows.shape) for start, rows in ckpt.row_blocks("model.norm.weight")]  # doctest: +SKIP
            [(0, (576,))]
        """
        shape = tuple(self.tensor_infos[name].shape)
        if self.read_row_range is None or not shape:
            yield 0, self.read_tensor(name)
            return
        row_bytes = 4 * math.prod(shape[1:])
        step = max(1, max_bytes // max(1, row_bytes))
        for start in range(0, shape[0], step):
            yield start, self.read_row_range(name, start, min(start + step, shape[0]))


# The keys of transformers' `generation_config.json` that say how to sample.
SAMPLING_CONFIG_KEYS = (
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
)


def sampling_generation_config(config: Any) -> dict[str, Any]:
    """The sampling part of a ``generation_config.json`` (``do_sample``, ``temperature``,
    ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``), values that are not numbers dropped.

    Example:
        >>> sampling_generation_config({"do_sample": True, "temperature": 0.6, "eos_token_id": 2})
        {'do_sample': True, 'temperature': 0.6}
    """
    out: dict[str, Any] = {}
    for key in SAMPLING_CONFIG_KEYS:
        value = (config or {}).get(key)
        if key == "do_sample" and isinstance(value, bool):
            out[key] = value
        elif (
            key != "do_sample"
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            out[key] = int(value) if key == "top_k" else float(value)
    return out
