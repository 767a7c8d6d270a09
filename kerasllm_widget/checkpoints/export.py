"""Keras model -> Hugging Face folder: the inverse of `checkpoints/convert.py`.

`export_preset` writes what ``transformers.AutoModelForCausalLM.from_pretrained`` and our own
``from_preset`` both read: ``config.json``, ``model.safetensors`` (or shards plus
``model.safetensors.index.json``), ``generation_config.json`` and the tokenizer files with the chat
template. Weights are streamed to disk one tensor at a time, so exporting needs about one tensor of
extra memory, not a second copy of the model. LoRA adapters are merged into the exported kernels
(Keras' ``Dense.kernel`` already returns ``kernel + alpha / rank * A @ B`` when LoRA is on).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from kerasllm_widget.checkpoints.convert import ml_dtypes_name, resolve_dtype, weight_map
from kerasllm_widget.checkpoints.safetensors_checkpoint import INDEX_FILE, SINGLE_FILE

# safetensors' dtype codes for the dtypes a Llama checkpoint is written in.
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}
DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' own default for safetensors shards


def parse_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000; ints pass through (bytes).

    Example:
        >>> parse_size("200MB")
        200000000
    """
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(
            f"max_shard_size={size!r}: write it as bytes (int) or like '5GB', '500MB'."
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def hf_config_from_backbone(backbone, tokenizer=None, dtype: str | None = None) -> dict[str, Any]:
    """`Llama3Backbone` -> a transformers ``LlamaConfig`` dict (``config.json``).

    The inverse of `convert.backbone_kwargs_from_hf_config`.

    Example:
        >>> hf_config_from_backbone(backbone)["model_type"]  # doctest: +SKIP
        'llama'
    """
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(backbone.vocabulary_size),
        "hidden_size": int(backbone.hidden_dim),
        "intermediate_size": int(backbone.intermediate_dim),
        "num_hidden_layers": int(backbone.num_layers),
        "num_attention_heads": int(backbone.num_query_heads),
        "num_key_value_heads": int(backbone.num_key_value_heads),
        "head_dim": int(backbone.head_dim),
        "hidden_act": "silu",
        "max_position_embeddings": int(backbone.max_sequence_length),
        "rms_norm_eps": float(backbone.layer_norm_epsilon),
        "rope_theta": float(backbone.rope_max_wavelength),
        "rope_scaling": dict(backbone.rope_scaling) if backbone.rope_scaling else None,
        "tie_word_embeddings": bool(backbone.tie_word_embeddings),
        "attention_bias": bool(backbone.attention_bias),
        "attention_dropout": 0.0,
        "mlp_bias": bool(backbone.mlp_bias),
        "initializer_range": float(backbone.initializer_range),
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": dtype or _variable_dtype(backbone),
    }
    if tokenizer is not None:
        config.update(_special_token_ids(tokenizer))
    return config


def _variable_dtype(backbone) -> str:
    return resolve_dtype(backbone.token_embedding.embeddings.dtype)


def _special_token_ids(tokenizer) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    if tokenizer.start_token_id is not None:
        ids["bos_token_id"] = int(tokenizer.start_token_id)
    stops = [int(i) for i in tokenizer.stop_token_ids]
    if stops:
        ids["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    pad = tokenizer.pad_token
    if pad is not None:
        ids["pad_token_id"] = int(tokenizer.pad_token_id)
    return ids


def _write_effective_chat_template(folder: Path, tokenizer) -> None:
    """A tokenizer without a template of its own chats with the Llama 3 default; write that
    default out, so that other readers (transformers) render conversations the same way."""
    if tokenizer.chat_template is not None:
        return
    from kerasllm_widget.chat.template import LLAMA3_CHAT_TEMPLATE

    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    config["chat_template"] = LLAMA3_CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def generation_config_from_tokenizer(tokenizer) -> dict[str, Any]:
    """The token ids part of ``generation_config.json`` (BOS, every stop id, PAD)."""
    return {**_special_token_ids(tokenizer)} if tokenizer is not None else {}


def _shard_plan(
    tensors: list[tuple[str, tuple[int, ...]]], itemsize: int, max_shard_size: int
) -> list[list[str]]:
    """Greedy, in order: a new shard starts when the next tensor would overflow this one."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_safetensors(
    path: Path, names: list[str], shapes: dict[str, tuple[int, ...]], dtype: str, read
) -> int:
    """Streams tensors into one safetensors file; ``read(name)`` returns one array at a time."""
    itemsize = np.dtype(ml_dtypes_name(dtype)).itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        nbytes = int(np.prod(shapes[name], dtype=np.int64)) * itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shapes[name]),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format aligns the data on 8 bytes
    with open(path, "wb") as handle:
        handle.write(len(header_bytes).to_bytes(8, "little"))
        handle.write(header_bytes)
        for name in names:
            array = read(name)
            if tuple(array.shape) != tuple(shapes[name]):
                raise RuntimeError(f"{name}: shape {array.shape}, expected {shapes[name]}")
            handle.write(np.ascontiguousarray(array).tobytes())
    return offset


def _to_host(value) -> np.ndarray:
    """A whole tensor on the host, also when it is sharded over devices (and hosts)."""
    import keras

    value = getattr(value, "value", value)  # a Keras variable -> its array
    if keras.backend.backend() == "jax" and not getattr(value, "is_fully_addressable", True):
        # Shards on other hosts' devices: gather them (every process must call this).
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return keras.ops.convert_to_numpy(value)


def export_weights(
    backbone,
    folder: str | os.PathLike,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> list[str]:
    """Writes the backbone's weights under their Hugging Face names and layouts.

    One ``model.safetensors`` when everything fits in ``max_shard_size``, else
    ``model-0000i-of-0000n.safetensors`` shards and ``model.safetensors.index.json``. Returns the
    file names written.

    Example:
        >>> export_weights(model.backbone, "my-model", max_shard_size="2GB")  # doctest: +SKIP
        ['model.safetensors']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = resolve_dtype(dtype or _variable_dtype(backbone))
    numpy_dtype = np.dtype(ml_dtypes_name(dtype))
    mapping = weight_map(backbone)
    # Every transform in the map (identity, transpose) is its own inverse, so the same function
    # takes a Keras value back to the Hugging Face layout.
    shapes = {
        name: tuple(transform(np.empty(tuple(value.shape), np.int8)).shape)
        for name, (value, transform) in mapping.items()
    }

    def read(name: str) -> np.ndarray:
        value, transform = mapping[name]
        return transform(_to_host(value)).astype(numpy_dtype, copy=False)

    for stale in list(folder.glob("model*.safetensors")) + [folder / INDEX_FILE]:
        stale.unlink(missing_ok=True)  # leftovers of an earlier export would confuse loaders
    shards = _shard_plan(list(shapes.items()), numpy_dtype.itemsize, parse_size(max_shard_size))
    if len(shards) == 1:
        _write_safetensors(folder / SINGLE_FILE, shards[0], shapes, dtype, read)
        return [SINGLE_FILE]
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    total = 0
    index: dict[str, str] = {}
    for filename, names in zip(files, shards, strict=True):
        total += _write_safetensors(folder / filename, names, shapes, dtype, read)
        index.update(dict.fromkeys(names, filename))
    (folder / INDEX_FILE).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=2),
        encoding="utf-8",
    )
    return files


def export_preset(
    backbone,
    folder: str | os.PathLike,
    tokenizer=None,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Writes a complete Hugging Face model folder for a backbone and (optionally) its tokenizer.

    Args:
        backbone: a `Llama3Backbone` (LoRA, if enabled, is merged into the written kernels).
        folder: where to write; created if needed.
        tokenizer: a `Llama3Tokenizer`; its ``tokenizer.json``, ``tokenizer_config.json`` (with the
            chat template) and the special ids in ``config.json``/``generation_config.json``.
        dtype: "float32", "bfloat16" or "float16"; default: the variables' dtype.
        max_shard_size: bytes or a string like "5GB"; larger models are split into shards.

    Example:
        >>> export_preset(model.backbone, "my-model", tokenizer=model.tokenizer)  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = resolve_dtype(dtype or _variable_dtype(backbone))
    config = hf_config_from_backbone(backbone, tokenizer, dtype=dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    export_weights(backbone, folder, dtype=dtype, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_to_preset(folder)
        _write_effective_chat_template(folder, tokenizer)
        generation = {**generation_config_from_tokenizer(tokenizer)}
        (folder / "generation_config.json").write_text(
            json.dumps(generation, indent=2), encoding="utf-8"
        )
    return folder
