"""Checkpoints off the happy path: saves that fail half-way or land among a user's files,
non-finite weights, tokenizer files that are not UTF-8, and symlink loops."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_llama import tiny_causal_lm

from kerasllm_widget.checkpoints import export
from kerasllm_widget.checkpoints.errors import CheckpointFormatError, PresetError

SMALL_SHARDS = "40KB"  # the tiny model in several shards


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones included) -> its bytes (None for a folder)."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


def weights_of(model) -> list[np.ndarray]:
    return [np.asarray(weight.value) for weight in model.backbone.weights]


def assert_loads_as(folder: Path, model) -> None:
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    loaded = Llama3CausalLM.from_preset(str(folder))
    for expected, actual in zip(weights_of(model), weights_of(loaded), strict=True):
        np.testing.assert_array_equal(actual, expected)


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.fixture(scope="module")
def old_model():
    return tiny_causal_lm(seed=1)


@pytest.fixture(scope="module")
def new_model():
    return tiny_causal_lm(seed=2)


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, old_model) -> Path:
    """``old_model`` saved in shards, with its tokenizer: copy it before changing anything."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    old_model.save_to_preset(folder, max_shard_size=SMALL_SHARDS)
    return folder


def user_files(folder: Path) -> None:
    """What a user keeps beside a checkpoint: other weights, notes, a folder of runs."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        folder / "model_v1_finetuned.safetensors",
    )
    (folder / "notes.txt").write_text("lr 3e-4, 2 epochs\n")
    (folder / "runs").mkdir()
    (folder / "runs" / "loss.csv").write_text("step,loss\n1,2.5\n")


# --- Saving: only the save's own files, all or nothing ----------------------------------------------


def test_save_leaves_user_files_and_replaces_only_the_previous_save(tmp_path, old_model, new_model):
    folder = tmp_path / "model"
    user_files(folder)
    kept = snapshot(folder)

    old_model.save_to_preset(folder, max_shard_size=SMALL_SHARDS)
    old_shards = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(old_shards.values())) > 1
    assert {k: v for k, v in snapshot(folder).items() if k in kept} == kept
    assert_loads_as(folder, old_model)

    new_model.save_to_preset(folder)  # one file now: the old shards and index go, nothing else
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in kept} == kept
    assert not set(old_shards.values()) & set(after)
    assert "model.safetensors.index.json" not in after
    assert set(after) - set(kept) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",  # the model card, written since the folder had none
    }
    assert_loads_as(folder, new_model)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left behind

    old_model.save_to_preset(folder, max_shard_size=SMALL_SHARDS)  # and back to shards
    after = snapshot(folder)
    assert "model.safetensors" not in after
    assert {k: v for k, v in after.items() if k in kept} == kept
    assert_loads_as(folder, old_model)


def test_save_to_a_new_folder_creates_it_whole(tmp_path, old_model):
    folder = tmp_path / "nested" / "model"
    old_model.save_to_preset(folder)
    assert_loads_as(folder, old_model)
    assert [p.name for p in folder.parent.iterdir()] == ["model"]
    # Moved into place as one folder, yet with the permissions of any folder made here.
    (tmp_path / "nested" / "reference").mkdir()
    assert folder.stat().st_mode == (tmp_path / "nested" / "reference").stat().st_mode


def _fail_at_second_shard(monkeypatch, model):
    calls = []
    write = export._write_safetensors

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the disk fills up half-way through the second shard
            path.write_bytes(b"\0" * 1000)
            raise enospc(path)
        return write(path, *args, **kwargs)

    monkeypatch.setattr(export, "_write_safetensors", failing)


def _fail_in_tokenizer_json(monkeypatch, model):
    def failing(directory):
        text = model.tokenizer.backend.to_str()
        (Path(directory) / "tokenizer.json").write_text(text[: len(text) // 2])
        raise enospc(Path(directory) / "tokenizer.json")

    monkeypatch.setattr(model.tokenizer, "save_to_preset", failing)


def _fail_at_flush(monkeypatch, model):
    # ext4/xfs allocate at writeback: a full disk may surface only when the file is flushed.
    def failing(fd):
        raise enospc(f"fd {fd}")

    monkeypatch.setattr(os, "fsync", failing)


@pytest.mark.parametrize(
    "fail",
    [_fail_at_second_shard, _fail_in_tokenizer_json, _fail_at_flush],
    ids=lambda f: f.__name__,
)
def test_failed_save_leaves_the_previous_checkpoint_exactly_as_it_was(
    tmp_path, saved_folder, old_model, new_model, monkeypatch, fail
):
    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    user_files(folder)
    before = snapshot(tmp_path)

    with monkeypatch.context() as patch:
        fail(patch, new_model)
        with pytest.raises(OSError) as caught:
            new_model.save_to_preset(folder, max_shard_size=SMALL_SHARDS)
    assert caught.value.errno == errno.ENOSPC

    assert snapshot(tmp_path) == before  # old files intact, nothing new, no staging folder
    assert_loads_as(folder, old_model)


@pytest.mark.parametrize("inside", [False, True], ids=["the-file", "below-the-file"])
def test_saving_onto_a_file_names_it_and_asks_for_a_folder(tmp_path, old_model, inside):
    existing = tmp_path / "weights.bin"
    existing.write_bytes(b"not a folder")
    target = existing / "model" if inside else existing
    with pytest.raises(PresetError, match=r"weights\.bin.*not a folder.*pick a folder path"):
        old_model.save_to_preset(target)
    assert existing.read_bytes() == b"not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


# --- Loading: weights that are not finite -------------------------------------------------------------

POISONED = "model.layers.1.mlp.down_proj.weight"


def poison(path: Path, tensor: str, row: int, value: float) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path)
    tensors[tensor][row, 3] = value
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_safetensors_weight_is_refused_naming_tensor_and_file(
    tmp_path, old_model, dtype, value
):
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    old_model.save_to_preset(tmp_path, dtype=dtype)
    poison(tmp_path / "model.safetensors", POISONED, row=5, value=value)
    kind = "NaN" if np.isnan(value) else "infinity"
    with pytest.raises(
        CheckpointFormatError,
        match=rf"model\.safetensors: tensor '{POISONED}' holds NaN or infinite values \({kind} at "
        r"\[5, 3\]\).*re-download the checkpoint, or re-export it",
    ):
        Llama3CausalLM.from_preset(str(tmp_path), dtype=dtype)


def test_non_finite_check_runs_on_each_block_as_it_is_read(tmp_path, old_model):
    from kerasllm_widget.checkpoints.presets import load_checkpoint

    old_model.save_to_preset(tmp_path, max_shard_size=SMALL_SHARDS)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = tmp_path / index["weight_map"]["model.embed_tokens.weight"]
    poison(shard, "model.embed_tokens.weight", row=300, value=np.nan)
    ckpt = load_checkpoint(tmp_path)
    rows_read = []
    with pytest.raises(
        CheckpointFormatError,
        match=rf"{shard.name}: tensor 'model\.embed_tokens\.weight' .* \(NaN at \[300, 3\]\)",
    ):
        # 64 floats a row, 100 rows a block: blocks 0, 1 and 2 are clean, block 3 holds row 300.
        for start, rows in ckpt.row_blocks("model.embed_tokens.weight", max_bytes=100 * 64 * 4):
            rows_read.append((start, len(rows)))
    assert rows_read == [(0, 100), (100, 100), (200, 100)]


def test_gguf_and_safetensors_refuse_non_finite_weights_alike(tmp_path):
    from test_gguf_checkpoint import tiny_hf_weights, write_gguf

    from kerasllm_widget.checkpoints.gguf_checkpoint import load_gguf_checkpoint

    weights = tiny_hf_weights(tied=True, bias=False)
    weights["model.norm.weight"][3] = np.inf
    checkpoint = load_gguf_checkpoint(write_gguf(tmp_path / "inf.gguf", hf_weights=weights))
    try:
        with pytest.raises(
            CheckpointFormatError,
            match=r"inf\.gguf: tensor 'output_norm\.weight' holds NaN or infinite values "
            r"\(infinity at \[3\]\).*re-download the checkpoint, or re-export it",
        ):
            list(checkpoint.row_blocks("model.norm.weight"))
    finally:
        checkpoint.close()


# --- Loading: tokenizer files that are not UTF-8, symlink loops -----------------------------------------


@pytest.fixture
def checkpoint_folder(tmp_path, saved_folder) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    return folder


@pytest.mark.parametrize(
    "filename", ["tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja"]
)
def test_text_file_that_is_not_utf8_names_file_and_byte(checkpoint_folder, filename):
    from kerasllm_widget.checkpoints.presets import load_checkpoint

    path = checkpoint_folder / filename
    if filename == "chat_template.jinja":  # read only when tokenizer_config.json has none
        config = json.loads((checkpoint_folder / "tokenizer_config.json").read_text())
        del config["chat_template"]
        (checkpoint_folder / "tokenizer_config.json").write_text(json.dumps(config))
        path.write_text("{{ messages }}")
    text = path.read_bytes()
    path.write_bytes(text[:10] + "é".encode("latin-1") + text[10:])  # saved as Latin-1
    with pytest.raises(
        CheckpointFormatError, match=rf"{filename}: not UTF-8 text \(byte 0xe9 at offset 10"
    ):
        load_checkpoint(checkpoint_folder)


def test_tokenizer_from_a_non_utf8_file_names_file_and_byte(checkpoint_folder):
    from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

    path = checkpoint_folder / "tokenizer.json"
    path.write_bytes(b'{"version": "1.0", "x": "\xff"}')
    with pytest.raises(CheckpointFormatError, match=r"tokenizer\.json: not UTF-8 text \(byte 0xff"):
        Llama3Tokenizer(path)


def self_link(path: Path) -> Path:
    path.unlink(missing_ok=True)
    path.symlink_to(path.name)
    return path


def two_link_loop(path: Path) -> Path:
    path.unlink(missing_ok=True)
    path.symlink_to(path.name + ".other")
    path.with_name(path.name + ".other").symlink_to(path.name)
    return path


@pytest.mark.parametrize("make_loop", [self_link, two_link_loop])
@pytest.mark.parametrize(
    "filename",
    ["config.json", "tokenizer.json", "model.safetensors.index.json", "model-00002-of-0000N"],
)
def test_symlink_loop_in_a_checkpoint_folder_is_named_as_one(
    checkpoint_folder, filename, make_loop
):
    from kerasllm_widget.checkpoints.presets import load_checkpoint

    if filename.endswith("0000N"):  # a shard the index names
        index = json.loads((checkpoint_folder / "model.safetensors.index.json").read_text())
        filename = sorted(set(index["weight_map"].values()))[1]
    loop = make_loop(checkpoint_folder / filename)
    with pytest.raises(CheckpointFormatError, match=rf"{re.escape(str(loop))}: is a symlink loop"):
        load_checkpoint(checkpoint_folder)


def test_symlink_loop_as_the_only_weights_file_is_not_called_truncated(checkpoint_folder):
    from kerasllm_widget.checkpoints.presets import load_checkpoint

    for shard in checkpoint_folder.glob("model*.safetensors*"):
        shard.unlink()
    loop = self_link(checkpoint_folder / "weights.safetensors")  # found by the *.safetensors glob
    with pytest.raises(
        CheckpointFormatError, match=rf"{re.escape(str(loop))}: is a symlink loop"
    ) as caught:
        load_checkpoint(checkpoint_folder)
    assert "truncated" not in str(caught.value)


@pytest.mark.parametrize("name", ["model", "model.gguf"])
def test_symlink_loop_as_the_preset_itself_is_named_as_one(tmp_path, name):
    from kerasllm_widget.checkpoints.presets import load_checkpoint

    loop = self_link(tmp_path / name)
    with pytest.raises(CheckpointFormatError, match=rf"{re.escape(str(loop))}: is a symlink loop"):
        load_checkpoint(loop)
