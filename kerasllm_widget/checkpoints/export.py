"""Keras model -> Hugging Face folder: the inverse of `checkpoints/convert.py`.

`export_preset` writes what ``transformers.AutoModelForCausalLM.from_pretrained`` and our own
``from_preset`` both read: ``config.json``, ``model.safetensors`` (or shards plus
``model.safetensors.index.json``), ``generation_config.json`` and the tokenizer files with the chat
template. Weights are streamed to disk one tensor at a time, so exporting needs about one tensor of
extra memory, not a second copy of the model. LoRA adapters are merged into the exported kernels
(Keras' ``Dense.kernel`` already returns ``kernel + alpha / rank * A @ B`` when LoRA is on).

A save is all or nothing: every file is written into a hidden staging folder and moved into place
only once all of them are on disk (`_staged_folder`), so a full disk or an exception half-way
leaves an earlier checkpoint in the folder exactly as it was. Files the save does not
write (a user's ``model_v1_finetuned.safetensors``, notes) are never touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kerasllm_widget.checkpoints.checkpoint import path_exists
from kerasllm_widget.checkpoints.convert import ml_dtypes_name, resolve_dtype, weight_map
from kerasllm_widget.checkpoints.errors import PresetError
from kerasllm_widget.checkpoints.safetensors_checkpoint import INDEX_FILE, SINGLE_FILE

# safetensors' dtype codes for the dtypes a Llama checkpoint is written in.
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}
DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' own default for safetensors shards


def parse_size(size: float | str) -> int:
    """A shard size in bytes: numbers are gigabytes (keras_hub's ``max_shard_size=10`` is
    10 GB); strings carry their unit (``"5GB"``, ``"500MB"``, ``"2GiB"``, ``"1000B"``).

    Example:
        >>> parse_size("200MB"), parse_size(2), parse_size(0.5)
        (200000000, 2000000000, 500000000)
    """
    allowed = "write it in GB as a number (keras_hub: 10 is 10 GB) or like '5GB', '500MB'"
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        if not (size > 0 and math.isfinite(size)):
            raise ValueError(f"max_shard_size={size!r}: {allowed}, above 0.")
        return max(1, int(size * _SIZE_UNITS["GB"]))
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _SIZE_UNITS or not float(match.group(1)) > 0:
        raise ValueError(f"max_shard_size={size!r}: {allowed}.")
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
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    config["chat_template"] = tokenizer.effective_chat_template
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


# --- Saving atomically -----------------------------------------------------------------------------


def _folder_to_save_into(folder: Path) -> Path:
    """The real folder a save goes to (links followed), after refusing paths that cannot be one."""
    path_exists(folder)  # a symlink loop is named as one
    target = folder.resolve()
    blocker = next((p for p in (target, *target.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "is a file" if blocker == target else f"is inside {blocker}, which is a file"
        raise PresetError(
            f"Cannot save to {folder}: it {where}, not a folder. A preset is a folder of files "
            "(config.json, model.safetensors, tokenizer.json, ...); pick a folder path (a new one "
            "or an existing folder), e.g. model.save_to_preset('my-model')."
        )
    return target


def _previous_weight_files(folder: Path) -> set[str]:
    """The weight files an earlier save left in ``folder``: ``model.safetensors``, the index and
    the shards its ``weight_map`` names. A new save replaces them; nothing else is removed."""
    names = {name for name in (SINGLE_FILE, INDEX_FILE) if os.path.lexists(folder / name)}
    if INDEX_FILE not in names:
        return names
    try:
        weight_map = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        shards = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return names  # an unreadable index: its shards cannot be told from the user's files
    return names | {
        shard
        for shard in shards
        if isinstance(shard, str)
        and shard == Path(shard).name  # a plain name in this folder, never a path out of it
        and shard.endswith(".safetensors")
        and os.path.lexists(folder / shard)
        and not (folder / shard).is_dir()
    }


def _fsync(path: Path) -> None:
    """Flushes a file (or a folder's entries) to disk. A full disk often shows only here: the
    file system allocates blocks at writeback, so ``write`` itself succeeded."""
    flags = os.O_RDONLY
    if path.is_dir():
        if not hasattr(os, "O_DIRECTORY"):
            return  # Windows cannot open a folder to flush it
        flags |= os.O_DIRECTORY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EBADF, errno.EINVAL):  # platforms that cannot fsync this fd
            raise
    finally:
        os.close(fd)


def _move_into_place(staging: Path, target: Path) -> None:
    """Moves every file of ``staging`` into ``target`` and removes the earlier save's weight files.

    Each move is an atomic rename that needs no space, so nothing here fails for a full disk.
    The order narrows what a crash between two moves could leave: data files first and the index
    (which says where every tensor is) last, so loaders follow the old index until the new one is
    in; then the old index goes before the old shards it names.
    """
    if not os.path.lexists(target):
        try:
            os.rename(staging, target)  # one rename: the folder appears complete or not at all
        except OSError:
            if not os.path.lexists(target):
                raise
            # Created by someone else meanwhile: merge into it below.
        else:
            _fsync(target.parent)
            return
    written = sorted(p.name for p in staging.iterdir())
    stale = _previous_weight_files(target) - set(written)
    data = [n for n in written if n.endswith(".safetensors")]
    last = [n for n in written if n == INDEX_FILE]
    for name in data + [n for n in written if n not in data and n not in last] + last:
        os.replace(staging / name, target / name)
    for name in sorted(stale, key=lambda n: n != INDEX_FILE):  # the index before its shards
        (target / name).unlink(missing_ok=True)
    staging.rmdir()
    _fsync(target)


@contextlib.contextmanager
def _staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty hidden folder to write a save into; on success its files replace those in
    ``folder``, on any failure it is removed and ``folder`` is left untouched.

    Not in /tmp: a rename is atomic (and needs no space) only within one file system. A new
    ``folder`` is staged beside itself and renamed into place whole; an existing one is staged
    inside itself, which is its own file system even when it is a mount point, and needs no
    write access to its parent.

    Example:
        >>> with _staged_folder("my-model") as staging:  # doctest: +SKIP
        ...     (staging / "config.json").write_text("{}")
    """
    target = _folder_to_save_into(Path(folder))
    if target.is_dir():
        home, prefix = target, ".saving-"
    else:
        home, prefix = target.parent, f".{target.name}.saving-"
        home.mkdir(parents=True, exist_ok=True)
    while True:
        # os.mkdir, not tempfile.mkdtemp: the folder may become the target itself, and should
        # get the usual permissions rather than mkdtemp's owner-only 0o700.
        staging = home / f"{prefix}{secrets.token_hex(4)}"
        with contextlib.suppress(FileExistsError):
            staging.mkdir()
            break
    try:
        yield staging
        for path in staging.iterdir():
            _fsync(path)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- Weights and presets ---------------------------------------------------------------------------


def _write_weights(
    backbone, folder: Path, dtype: str | None, max_shard_size: int | str
) -> list[str]:
    """The weight files of `export_weights`, written into an empty (staging) folder."""
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


def export_weights(
    backbone,
    folder: str | os.PathLike,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> list[str]:
    """Writes the backbone's weights under their Hugging Face names and layouts.

    One ``model.safetensors`` when everything fits in ``max_shard_size``, else
    ``model-0000i-of-0000n.safetensors`` shards and ``model.safetensors.index.json``. Returns the
    file names written. All or nothing: an earlier save's weight files in ``folder`` are replaced
    only once the new ones are complete; other files there are left alone.

    Example:
        >>> export_weights(model.backbone, "my-model", max_shard_size="2GB")  # doctest: +SKIP
        ['model.safetensors']
    """
    with _staged_folder(folder) as staging:
        files = _write_weights(backbone, staging, dtype, max_shard_size)
    return files


def export_preset(
    backbone,
    folder: str | os.PathLike,
    tokenizer=None,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    generation_config: dict[str, Any] | None = None,
    model_card: str | None = None,
) -> Path:
    """Writes a complete Hugging Face model folder for a backbone and (optionally) its tokenizer.

    Args:
        backbone: a `Llama3Backbone` (LoRA, if enabled, is merged into the written kernels).
        folder: the folder to write; created if needed. All or nothing: the files are written
            beside it and moved in once complete, replacing an earlier save's files (its
            weights, config, tokenizer files); files the save does not write are left alone.
        tokenizer: a `Llama3Tokenizer`; its ``tokenizer.json``, ``tokenizer_config.json`` (with the
            chat template) and the special ids in ``config.json``/``generation_config.json``.
        dtype: "float32", "bfloat16" or "float16"; default: the variables' dtype.
        max_shard_size: gigabytes (a number, as in keras_hub) or a string like "500MB";
            larger models are split into shards.
        generation_config: sampling defaults (``temperature``, ``top_p``, ...) written into
            ``generation_config.json`` beside the special token ids.
        model_card: the text of ``README.md`` (a Hugging Face model card), if any.

    Example:
        >>> export_preset(model.backbone, "my-model", tokenizer=model.tokenizer)  # doctest: +SKIP
    """
    dtype = resolve_dtype(dtype or _variable_dtype(backbone))
    config = hf_config_from_backbone(backbone, tokenizer, dtype=dtype)
    with _staged_folder(folder) as staging:
        (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        _write_weights(backbone, staging, dtype=dtype, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_to_preset(staging)
            _write_effective_chat_template(staging, tokenizer)
        if tokenizer is not None or generation_config:
            generation = {
                **(generation_config or {}),
                **(generation_config_from_tokenizer(tokenizer) if tokenizer is not None else {}),
            }
            (staging / "generation_config.json").write_text(
                json.dumps(generation, indent=2), encoding="utf-8"
            )
        if model_card is not None:
            (staging / "README.md").write_text(model_card, encoding="utf-8")
    return Path(folder)
