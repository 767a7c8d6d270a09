"""A local folder in Hugging Face layout: config.json, safetensors weights, tokenizer files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from kerasllm_widget.checkpoints.checkpoint import (
    Checkpoint,
    TensorInfo,
    path_exists,
    read_text_file,
    refuse_non_finite,
)
from kerasllm_widget.checkpoints.errors import CheckpointFormatError, PresetError
from kerasllm_widget.checkpoints.model_card import card_metadata

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path_exists(path):
        if required:
            raise PresetError(
                f"{path.parent}: no {path.name} found. A Hugging Face checkpoint folder needs "
                f"{path.name} beside its *.safetensors files; point at the folder that holds it."
            )
        return {}
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as error:
        raise CheckpointFormatError(
            f"{path}: not valid JSON ({error}); re-download the file."
        ) from None


def _shard_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it."""
    index_path = folder / INDEX_FILE
    if path_exists(index_path):
        weight_map = _read_json(index_path, required=True).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointFormatError(f"{index_path}: has no 'weight_map'; re-download it.")
        files = {}
        for shard in sorted(set(weight_map.values())):
            if not path_exists(folder / shard):
                raise CheckpointFormatError(
                    f"{index_path} names shard {shard!r}, which is not in {folder}. The download is "
                    "incomplete; fetch the missing shard (or the whole repo) again."
                )
        for name, shard in weight_map.items():
            files[name] = folder / shard
        return files
    single = folder / SINGLE_FILE
    candidates = [single] if path_exists(single) else sorted(folder.glob("*.safetensors"))
    if not candidates:
        raise PresetError(
            f"{folder}: no model.safetensors or {INDEX_FILE} found. Only safetensors weights are "
            "read (not pytorch_model.bin); convert the checkpoint or pick a safetensors revision."
        )
    if len(candidates) > 1:
        raise CheckpointFormatError(
            f"{folder}: several .safetensors files but no {INDEX_FILE} to say which tensor is where."
        )
    return {name: candidates[0] for name in _tensor_headers(candidates[0])}


def _tensor_headers(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    try:
        with safe_open(str(path), framework="numpy") as handle:
            headers = {}
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                headers[name] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
            return headers
    except (SafetensorError, OSError) as error:
        path_exists(path)  # a symlink loop is named as one (safetensors says "no such file")
        raise CheckpointFormatError(
            f"{path}: cannot be read as safetensors ({error}). The file looks truncated or corrupt; "
            "re-download it."
        ) from None


def load_folder_checkpoint(folder: str | os.PathLike, name: str | None = None) -> Checkpoint:
    """Reads a Hugging Face model folder's metadata; tensors are read later, one at a time.

    Example:
        >>> ckpt = load_folder_checkpoint("/path/to/Llama-3.2-1B-Instruct")  # doctest: +SKIP
        >>> ckpt.tensor_infos["model.norm.weight"].shape  # doctest: +SKIP
        (2048,)
    """
    folder = Path(folder)
    if not folder.is_dir():
        if path_exists(folder):  # raises for a symlink loop
            raise PresetError(f"{folder}: not a folder; pass the checkpoint's folder.")
        raise PresetError(f"{folder}: no such folder.")
    config = _read_json(folder / "config.json", required=True)
    files = _shard_files(folder)
    infos: dict[str, TensorInfo] = {}
    for path in sorted(set(files.values())):
        for tensor_name, (shape, dtype) in _tensor_headers(path).items():
            if files.get(tensor_name) == path:
                infos[tensor_name] = TensorInfo(tensor_name, shape, dtype)
    missing = sorted(set(files) - set(infos))
    if missing:
        raise CheckpointFormatError(
            f"{folder / INDEX_FILE} lists {missing[0]!r} in {files[missing[0]].name}, but that shard "
            "does not contain it. The shards and the index disagree; re-download them."
        )

    def read(tensor_name: str, rows: slice | None) -> np.ndarray:
        path = files[tensor_name]
        # Open per read: the memory map is released after each one, so the mapped file pages do
        # not add up to a second copy of the model in resident memory while loading.
        try:
            with safe_open(str(path), framework="numpy") as handle:
                if rows is None:
                    array = handle.get_tensor(tensor_name)
                else:
                    array = handle.get_slice(tensor_name)[rows]
        except (SafetensorError, OSError) as error:
            path_exists(path)  # a symlink loop is named as one
            raise CheckpointFormatError(
                f"{path}: tensor {tensor_name!r} cannot be read ({error}); the file looks truncated "
                "or corrupt. Re-download it."
            ) from None
        # Checked block by block as the loader converts it (`Checkpoint.row_blocks`).
        return refuse_non_finite(
            array, tensor_name, path, first_row=0 if rows is None else rows.start or 0
        )

    def read_tensor(tensor_name: str) -> np.ndarray:
        return read(tensor_name, None)

    def read_row_range(tensor_name: str, start: int, stop: int) -> np.ndarray:
        return read(tensor_name, slice(start, stop))

    tokenizer_path = folder / "tokenizer.json"
    tokenizer_config = _read_json(folder / "tokenizer_config.json", required=False)
    # transformers 5 writes the chat template to its own file instead of tokenizer_config.json.
    template_path = folder / "chat_template.jinja"
    if not tokenizer_config.get("chat_template") and path_exists(template_path):
        tokenizer_config["chat_template"] = read_text_file(template_path)
    return Checkpoint(
        name=name or str(folder),
        source=str(folder),
        config=config,
        tensor_infos=infos,
        read_tensor=read_tensor,
        tokenizer_json=read_text_file(tokenizer_path) if path_exists(tokenizer_path) else None,
        tokenizer_config=tokenizer_config,
        generation_config=_read_json(folder / "generation_config.json", required=False),
        card=card_metadata(folder),
        read_row_range=read_row_range,
    )
