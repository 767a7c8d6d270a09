"""LoRA: only the adapters train; adapters save, load, merge, and export merged."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from tiny_llama import CORPUS, tiny_causal_lm

from kerasllm_widget.models.llama3_lora import lora_layers


def logits_of(model, token_ids):
    x = {"token_ids": token_ids, "padding_mask": np.ones(token_ids.shape, bool)}
    return np.asarray(model(x))


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(5).integers(0, 320, size=(2, 24)).astype("int32")


@pytest.fixture(scope="module")
def trained():
    """A tiny model fine-tuned with rank-4 LoRA, and a snapshot of its weights before training."""
    model = tiny_causal_lm(seed=7)
    names = model.backbone.enable_lora(4)
    before = {w.path: np.array(w.value) for w in model.weights}
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-2))
    history = model.fit(CORPUS, batch_size=4, epochs=3, verbose=0)
    return model, names, before, history


def test_only_the_adapters_train(trained):
    model, names, before, history = trained
    assert len(names) == 2 * 2  # query and value in each of the 2 blocks
    trainable = sorted(w.path.split("/", 1)[1] for w in model.trainable_weights)
    expected = sorted(
        f"transformer_layer_{i}/attention/{layer}/lora_kernel_{ab}"
        for i in range(2)
        for layer in ("query", "value")
        for ab in "ab"
    )
    assert trainable == expected
    changed = {
        w.path for w in model.weights if not np.array_equal(before[w.path], np.array(w.value))
    }
    assert changed == {w.path for w in model.trainable_weights}
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.reference
def test_export_merges_the_adapters(trained, tmp_path, token_ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = trained[0]
    model.save_to_preset(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(token_ids)).logits.numpy()
    assert np.abs(theirs - logits_of(model, token_ids)).max() < 1e-4


def test_adapters_save_in_peft_layout_and_load_into_a_fresh_model(trained, tmp_path, token_ids):
    from safetensors.numpy import load_file

    model = trained[0]
    model.backbone.save_lora_weights(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 4.0)
    assert config["target_modules"] == ["q_proj", "v_proj"]
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_{}.weight"
    a, b = tensors[key.format("A")], tensors[key.format("B")]
    assert a.shape == (4, 64) and b.shape == (16, 4)  # PEFT: A [r, in], B [out, r]
    # PEFT's merged weight W + alpha/r * B @ A is the transposed Keras kernel with LoRA on.
    dense = model.backbone.transformer_layers[1].attention.value_dense
    base = next(v for v in dense.variables if v.name == "kernel")
    merged = np.array(base.value).T + (4.0 / 4) * b @ a
    np.testing.assert_allclose(merged, np.array(dense.kernel).T, atol=1e-6)

    fresh = tiny_causal_lm(seed=7)  # same base weights, no adapters
    assert not np.allclose(logits_of(fresh, token_ids), logits_of(model, token_ids), atol=1e-3)
    fresh.backbone.load_lora_weights(tmp_path / "adapter")
    assert sorted(lora_layers(fresh.backbone)) == sorted(lora_layers(model.backbone))
    np.testing.assert_allclose(logits_of(fresh, token_ids), logits_of(model, token_ids), atol=1e-5)

    other_rank = tiny_causal_lm(seed=7)
    other_rank.backbone.enable_lora(2)
    with pytest.raises(ValueError, match="different rank"):
        other_rank.backbone.load_lora_weights(tmp_path / "adapter")


def test_merge_keeps_the_outputs_and_restarts_the_adapters(token_ids):
    model = tiny_causal_lm(seed=8)
    model.backbone.enable_lora(2, target_names=["q_proj", "value_dense", "ffn_down"])
    for dense in lora_layers(model.backbone).values():
        dense.lora_kernel_b.assign(
            np.random.default_rng(0).normal(0, 0.3, dense.lora_kernel_b.shape)
        )
    before = logits_of(model, token_ids)
    model.backbone.merge_lora_weights()
    np.testing.assert_allclose(logits_of(model, token_ids), before, atol=1e-4)
    for dense in lora_layers(model.backbone).values():
        assert not np.array(dense.lora_kernel_b.value).any()


def test_keras_file_of_a_lora_model_holds_the_merged_weights(trained, tmp_path, token_ids):
    model = trained[0]
    model.save(tmp_path / "lora.keras")
    restored = keras.saving.load_model(tmp_path / "lora.keras")
    np.testing.assert_allclose(
        logits_of(restored, token_ids), logits_of(model, token_ids), atol=1e-5
    )


def test_lora_errors():
    model = tiny_causal_lm(seed=9)
    with pytest.raises(ValueError, match="Unknown LoRA target"):
        model.backbone.enable_lora(4, target_names=["attention"])
    with pytest.raises(ValueError, match="not enabled"):
        model.backbone.save_lora_weights("/tmp/never-written")
    model.backbone.enable_lora(4)
    with pytest.raises(ValueError, match="already enabled"):
        model.backbone.enable_lora(4)
