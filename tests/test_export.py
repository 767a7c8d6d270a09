"""Saving: Hugging Face folders (read back by transformers and by us), `.keras` files, uploads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_llama import CORPUS, tiny_causal_lm

from kerasllm_widget.checkpoints.export import parse_size
from kerasllm_widget.checkpoints.upload import UploadError, upload_preset


def our_logits(model, token_ids):
    token_ids = np.asarray(token_ids, dtype="int32")
    x = {"token_ids": token_ids, "padding_mask": np.ones(token_ids.shape, bool)}
    return np.asarray(model(x), dtype=np.float32)


def transformers_logits(folder, token_ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(np.asarray(token_ids))).logits.numpy()


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_causal_lm(seed=1)


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(0, 320, size=(2, 40))


@pytest.mark.reference
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "tie_word_embeddings": False,
            "attention_bias": True,
            "mlp_bias": True,
            "rope_scaling": None,
            "rope_max_wavelength": 10000.0,
        },
    ],
    ids=["llama3.2-shaped", "untied-biases-no-rope-scaling"],
)
def test_saved_folder_loads_in_transformers_with_same_logits(tmp_path, token_ids, overrides):
    model = tiny_causal_lm(seed=2, **overrides)
    if overrides.get("attention_bias"):
        # Zero-initialised biases would not tell a lost bias from a written one.
        for weight in model.backbone.weights:
            if weight.path.endswith("bias"):
                weight.assign(np.random.default_rng(3).normal(0, 0.5, weight.shape))
    model.save_to_preset(tmp_path)
    expected = our_logits(model, token_ids)
    actual = transformers_logits(tmp_path, token_ids)
    assert np.abs(actual - expected).max() < 1e-4
    assert expected.std() > 0.1  # non-degenerate logits, or the check above proves nothing
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] == model.backbone.tie_word_embeddings
    assert config["bos_token_id"] == 0 and config["eos_token_id"] == 4


def test_saved_folder_loads_back_identically_with_tokenizer(tmp_path, tiny_model):
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    tiny_model.save_to_preset(tmp_path)
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    } <= {p.name for p in tmp_path.iterdir()}
    loaded = Llama3CausalLM.from_preset(str(tmp_path))
    for saved, restored in zip(tiny_model.backbone.weights, loaded.backbone.weights, strict=True):
        assert saved.path.split("/", 1)[1] == restored.path.split("/", 1)[1]
        np.testing.assert_array_equal(np.asarray(saved.value), np.asarray(restored.value))
    before, after = tiny_model.preprocessor.tokenizer, loaded.preprocessor.tokenizer
    for text in CORPUS[:3]:
        np.testing.assert_array_equal(before(text), after(text))
    assert after.start_token_id == before.start_token_id
    assert after.end_token_id == before.end_token_id
    assert set(after.stop_token_ids) == set(before.stop_token_ids)
    conversation = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there"},
    ]
    assert after.apply_chat_template(conversation) == before.apply_chat_template(conversation)
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 4 and generation["bos_token_id"] == 0


@pytest.mark.reference
def test_sharded_export_has_an_index_and_loads_everywhere(tmp_path, tiny_model, token_ids):
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    tiny_model.save_to_preset(tmp_path, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 3 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == 4 * tiny_model.backbone.count_params()
    expected = our_logits(tiny_model, token_ids)
    assert np.abs(transformers_logits(tmp_path, token_ids) - expected).max() < 1e-4
    loaded = Llama3CausalLM.from_preset(str(tmp_path))
    np.testing.assert_array_equal(our_logits(loaded, token_ids), expected)
    # A later unsharded export into the same folder leaves no stale shards behind.
    tiny_model.save_to_preset(tmp_path)
    assert not list(tmp_path.glob("model-*.safetensors"))
    assert not (tmp_path / "model.safetensors.index.json").exists()


@pytest.mark.reference
def test_transformers_tokenizer_reads_our_tokenizer_files(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tiny_model.save_to_preset(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    ours = tiny_model.preprocessor.tokenizer
    conversation = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there"},
    ]
    assert theirs.apply_chat_template(conversation, tokenize=False) == ours.apply_chat_template(
        conversation, add_generation_prompt=False
    )
    assert theirs.encode(CORPUS[0], add_special_tokens=False) == ours(CORPUS[0]).tolist()
    assert theirs.eos_token == "<|eot_id|>" and theirs.bos_token == "<|begin_of_text|>"


def test_bfloat16_export(tmp_path, tiny_model):
    from safetensors import safe_open

    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    tiny_model.save_to_preset(tmp_path, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}
    loaded = Llama3CausalLM.from_preset(str(tmp_path), dtype="bfloat16")
    expected = np.asarray(tiny_model.backbone.token_embedding.embeddings.value).astype("bfloat16")
    np.testing.assert_array_equal(
        np.asarray(loaded.backbone.token_embedding.embeddings.value), expected
    )


def test_keras_file_round_trip(tmp_path, tiny_model, token_ids):
    import keras

    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(tiny_model)
    np.testing.assert_array_equal(
        our_logits(restored, token_ids), our_logits(tiny_model, token_ids)
    )
    assert restored.preprocessor.sequence_length == tiny_model.preprocessor.sequence_length
    x, labels, weights = restored.preprocessor(CORPUS[:2])
    x0, labels0, weights0 = tiny_model.preprocessor(CORPUS[:2])
    np.testing.assert_array_equal(x["token_ids"], x0["token_ids"])
    np.testing.assert_array_equal(weights, weights0)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20
    # Numbers are gigabytes, as keras_hub's save_to_preset(max_shard_size=10) means 10 GB.
    assert parse_size(10) == 10 * 10**9 and parse_size(0.001) == 10**6
    for bad in ("1234", 0, -1, float("nan"), "0GB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            parse_size(bad)
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots")


# --- upload -------------------------------------------------------------------------------------


@pytest.fixture
def preset_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    return tmp_path


def _hub_offline(monkeypatch, offline: bool) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE once, at import.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def test_upload_offline_says_so(preset_folder, monkeypatch):
    _hub_offline(monkeypatch, True)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(UploadError, match="offline.*HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE"):
        upload_preset("hf://someone/tiny-llama", preset_folder)


def test_upload_without_token_says_how_to_get_one(preset_folder, monkeypatch, tmp_path):
    _hub_offline(monkeypatch, False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    with pytest.raises(UploadError, match="no Hugging Face token.*HF_TOKEN"):
        upload_preset("hf://someone/tiny-llama", preset_folder)


@pytest.mark.parametrize(
    "uri, message",
    [
        ("someone/tiny-llama", "hf://user/repo"),
        ("hf://someone", "hf://org/name"),
        ("hf://someone/repo/model.gguf", "not a file"),
    ],
)
def test_upload_rejects_bad_uris(preset_folder, uri, message):
    with pytest.raises(UploadError, match=message):
        upload_preset(uri, preset_folder, token="hf_x")


def test_upload_rejects_a_folder_that_is_not_a_model(tmp_path, monkeypatch):
    _hub_offline(monkeypatch, False)
    with pytest.raises(UploadError, match="save_to_preset"):
        upload_preset("hf://someone/tiny-llama", tmp_path, token="hf_x")


def test_upload_without_network_reports_the_endpoint(preset_folder):
    """As far as an upload goes without a network: huggingface_hub really tries to connect."""
    code = (
        "from kerasllm_widget.checkpoints.upload import upload_preset, UploadError\n"
        "try:\n"
        f"    upload_preset('hf://someone/tiny-llama', {str(preset_folder)!r}, private=True,\n"
        "                  commit_message='test')\n"
        "except UploadError as error:\n"
        "    print('UploadError:', error)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_not_a_real_token",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "UploadError: Upload to hf://someone/tiny-llama failed" in result.stdout, result.stderr
    assert "http://127.0.0.1:9" in result.stdout and "cannot be reached" in result.stdout


def test_model_upload_fails_before_saving_when_offline(tiny_model, monkeypatch):
    _hub_offline(monkeypatch, True)
    with pytest.raises(UploadError, match="HF_HUB_OFFLINE"):
        tiny_model.upload_preset("hf://someone/tiny-llama", private=True)
