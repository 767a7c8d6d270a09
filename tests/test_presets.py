"""Preset resolution and the errors a user sees for bad checkpoints.

Every bad input must raise a `PresetError` naming the file or field and what to do, before any
weight is assigned.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from kerasllm_widget.checkpoints.convert import resolve_dtype
from kerasllm_widget.checkpoints.errors import (
    CheckpointFormatError,
    PresetError,
    UnsupportedModelError,
)
from kerasllm_widget.checkpoints.presets import load_checkpoint, parse_hf_uri
from kerasllm_widget.models.llama3_backbone import Llama3Backbone

pytestmark = pytest.mark.reference  # the checkpoints are written by transformers


@pytest.fixture
def checkpoint_copy(random_llama32_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(random_llama32_checkpoint, folder)
    return folder


def load(folder):
    return Llama3Backbone.from_checkpoint(load_checkpoint(str(folder)), progress=False)


def test_missing_config_json(checkpoint_copy):
    (checkpoint_copy / "config.json").unlink()
    with pytest.raises(PresetError, match=r"no config\.json found"):
        load(checkpoint_copy)


@pytest.mark.parametrize("model_type", ["mistral", "gpt2"])
def test_unsupported_model_type(checkpoint_copy, model_type):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["model_type"] = model_type
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UnsupportedModelError, match=rf"model_type '{model_type}' is not supported.*Llama"
    ):
        load(checkpoint_copy)


def _rewrite_weights(folder, edit):
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_named(checkpoint_copy):
    _rewrite_weights(checkpoint_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(
        CheckpointFormatError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"
    ):
        load(checkpoint_copy)


def test_wrong_shape_is_named(checkpoint_copy):
    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 128), np.float32)

    _rewrite_weights(checkpoint_copy, shrink)
    with pytest.raises(
        CheckpointFormatError, match=r"k_proj\.weight' has shape \(16, 128\).*\(32, 128\)"
    ):
        load(checkpoint_copy)


def test_truncated_safetensors(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors.*truncated or corrupt"):
        load(checkpoint_copy)


def test_corrupt_safetensors_header(checkpoint_copy):
    (checkpoint_copy / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"
    )
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt"):
        load(checkpoint_copy)


def test_index_naming_a_missing_shard(checkpoint_copy):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(checkpoint_copy / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    save_file(
        {n: tensors[n] for n in names[:half]},
        str(checkpoint_copy / "model-00001-of-00002.safetensors"),
    )
    (checkpoint_copy / "model.safetensors").unlink()
    index = {
        "weight_map": {
            n: (
                "model-00001-of-00002.safetensors"
                if i < half
                else "model-00002-of-00002.safetensors"
            )
            for i, n in enumerate(names)
        }
    }
    (checkpoint_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointFormatError, match=r"names shard 'model-00002-of-00002\.safetensors'"
    ):
        load(checkpoint_copy)


def test_sharded_checkpoint_loads_like_single_file(random_llama32_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "sharded"
    shutil.copytree(random_llama32_checkpoint, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(folder / shard))
        weight_map.update({n: shard for n in shard_names})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = load(folder)
    single = load(random_llama32_checkpoint)
    for a, b in zip(sharded.weights, single.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unknown_builtin_name_lists_known_ones():
    with pytest.raises(PresetError, match=r"Unknown preset 'llama-9b'.*'smollm2-135m-instruct'"):
        load_checkpoint("llama-9b")


def test_hf_repo_not_in_cache_while_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub's own setting
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(
        PresetError,
        match=r"hf://someone/missing-model: not in the Hugging Face cache.*HF_HUB_OFFLINE",
    ):
        load_checkpoint("hf://someone/missing-model")


def test_unknown_dtype():
    with pytest.raises(PresetError, match=r"Unknown dtype 'float8'.*'bfloat16'"):
        resolve_dtype("float8")
    assert resolve_dtype(None) == "float32"
    assert resolve_dtype("bf16") == "bfloat16"


def test_parse_hf_uri_forms():
    assert parse_hf_uri("hf://meta-llama/Llama-3.2-1B-Instruct") == (
        "meta-llama/Llama-3.2-1B-Instruct",
        None,
        None,
    )
    assert parse_hf_uri("hf://org/name@v1.0") == ("org/name", None, "v1.0")
    assert parse_hf_uri("hf://org/name/model.Q4_0.gguf") == ("org/name", "model.Q4_0.gguf", None)
    with pytest.raises(PresetError, match="hf://org/name"):
        parse_hf_uri("hf://just-a-name")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_load_is_the_rounded_float32_load(random_llama32_checkpoint, dtype):
    full = load(random_llama32_checkpoint)
    half = Llama3Backbone.from_checkpoint(
        load_checkpoint(str(random_llama32_checkpoint)), dtype=dtype, progress=False
    )
    assert half.dtype_policy.name == dtype
    kernel = half.transformer_layers[0].attention.query_dense.kernel
    assert str(kernel.dtype) == dtype
    expected = np.asarray(full.transformer_layers[0].attention.query_dense.kernel).astype(dtype)
    np.testing.assert_array_equal(np.asarray(kernel), expected)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weights_filled_a_few_rows_at_a_time_are_the_whole_tensors(
    random_llama32_checkpoint, dtype
):
    from kerasllm_widget.checkpoints.convert import ml_dtypes_name, read_converted, weight_map

    ckpt = load_checkpoint(str(random_llama32_checkpoint))
    backbone = Llama3Backbone.from_checkpoint(ckpt, load_weights=False, progress=False)
    numpy_dtype = np.dtype(ml_dtypes_name(dtype))
    for name, (variable, transform) in weight_map(backbone).items():
        # 1000 bytes: one 128-wide row per block, so a kernel is written a column at a time.
        filled = read_converted(
            ckpt, name, tuple(variable.shape), dtype, transform, block_bytes=1000
        )
        expected = np.ascontiguousarray(transform(ckpt.read_tensor(name)), dtype=numpy_dtype)
        assert filled.dtype == numpy_dtype and filled.flags.c_contiguous, name
        np.testing.assert_array_equal(filled, expected, err_msg=name)
    first, rows = next(ckpt.row_blocks("model.embed_tokens.weight", max_bytes=1000))
    assert first == 0 and rows.shape == (1, 128)


def test_weights_no_tensor_fills_are_refused(random_llama32_checkpoint):
    from kerasllm_widget.checkpoints.convert import load_backbone_weights

    ckpt = load_checkpoint(str(random_llama32_checkpoint))
    backbone = Llama3Backbone.from_checkpoint(ckpt, load_weights=False, progress=False)
    backbone.enable_lora(2)
    with pytest.raises(
        PresetError, match=r"no checkpoint tensor fills.*lora_kernel_a.*before enabling LoRA"
    ):
        load_backbone_weights(backbone, ckpt, progress=False)
