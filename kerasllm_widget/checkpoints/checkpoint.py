"""The one shape every checkpoint source is read into before it becomes a Keras model.

A `Checkpoint` holds the Hugging Face view of a model: its `config.json` as a dict, its tokenizer as
a `tokenizers.Tokenizer`, the tokenizer and generation configs, and a way to read its tensors one at
a time under their Hugging Face names and layouts (``model.layers.0.self_attn.q_proj.weight`` as
``[out_features, in_features]``). Safetensors folders, `hf://` repos and GGUF files all produce one,
so that conversion to Keras is written once (`checkpoints/convert.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# How much of one tensor is read at a time (as float32) when it is copied into a model weight.
ROW_BLOCK_BYTES = 16 * 1024 * 1024


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
