"""Our Keras Llama against the reference implementation (transformers on PyTorch CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.models.llama3_backbone import Llama3Backbone

pytestmark = pytest.mark.reference


def reference_logits(folder, token_ids, attention_mask=None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        mask = None if attention_mask is None else torch.tensor(attention_mask, dtype=torch.long)
        out = model(input_ids=torch.tensor(token_ids), attention_mask=mask)
    return out.logits.numpy()


def our_logits(backbone, token_ids, padding_mask=None, attention_layers=()):
    token_ids = np.asarray(token_ids, dtype="int32")
    if padding_mask is None:
        padding_mask = np.ones(token_ids.shape, bool)
    hidden, _, _ = backbone.forward_stack(
        token_ids, padding_mask=np.asarray(padding_mask, bool), attention_layers=attention_layers
    )
    return np.asarray(backbone.token_embedding(hidden, reverse=True))


@pytest.fixture(scope="module")
def tiny_backbone(random_llama32_checkpoint):
    ckpt = load_checkpoint(str(random_llama32_checkpoint))
    return Llama3Backbone.from_checkpoint(ckpt, progress=False)


def test_random_llama32_logits_match_reference(random_llama32_checkpoint, tiny_backbone):
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 512, size=(2, 300))  # several hundred positions
    expected = reference_logits(random_llama32_checkpoint, token_ids)
    actual = our_logits(tiny_backbone, token_ids)
    assert np.abs(actual - expected).max() < 1e-4
    # The logits are not degenerate: the check above would be meaningless on near-zero outputs.
    assert expected.std() > 0.1


def test_explicit_attention_path_matches_fast_path(tiny_backbone):
    token_ids = np.random.default_rng(1).integers(0, 512, size=(1, 64))
    fast = our_logits(tiny_backbone, token_ids)
    explicit = our_logits(tiny_backbone, token_ids, attention_layers=(0, 1))
    assert np.abs(fast - explicit).max() < 1e-5


def test_padded_batch_matches_reference_on_real_tokens(random_llama32_checkpoint, tiny_backbone):
    rng = np.random.default_rng(2)
    token_ids = rng.integers(0, 512, size=(2, 40))
    mask = np.ones((2, 40), bool)
    mask[1, 25:] = False  # the second row is right-padded
    token_ids[1, 25:] = 0
    expected = reference_logits(random_llama32_checkpoint, token_ids, mask.astype(int))
    actual = our_logits(tiny_backbone, token_ids, mask)
    assert np.abs(actual[mask] - expected[mask]).max() < 1e-4


def test_rope_parameters_form_equals_rope_scaling_form(random_llama32_checkpoint, tmp_path):
    """transformers 5 writes `rope_parameters`; older checkpoints write `rope_scaling`."""
    from kerasllm_widget.checkpoints.convert import backbone_kwargs_from_hf_config

    config = json.loads((random_llama32_checkpoint / "config.json").read_text())
    legacy = {k: v for k, v in config.items() if k != "rope_parameters"}
    legacy["rope_theta"] = 500000.0
    legacy["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    modern = {k: v for k, v in config.items() if k not in ("rope_scaling", "rope_theta")}
    modern["rope_parameters"] = {"rope_theta": 500000.0, **legacy["rope_scaling"]}
    a = backbone_kwargs_from_hf_config(legacy)
    b = backbone_kwargs_from_hf_config(modern)
    assert a == b
    assert a["rope_scaling"]["rope_type"] == "llama3" and a["rope_max_wavelength"] == 500000.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": False},
        {"attention_bias": True, "mlp_bias": True},
        {"rope_scaling": None, "rope_theta": 10000.0, "num_key_value_heads": 8, "head_dim": None},
    ],
    ids=["untied", "biases", "llama2-style"],
)
def test_architecture_variants_match_reference(tmp_path, overrides):
    from conftest import write_random_llama_checkpoint

    folder = write_random_llama_checkpoint(tmp_path / "ckpt", overrides)
    backbone = Llama3Backbone.from_checkpoint(load_checkpoint(str(folder)), progress=False)
    token_ids = np.random.default_rng(3).integers(0, 512, size=(1, 50))
    expected = reference_logits(folder, token_ids)
    assert np.abs(our_logits(backbone, token_ids) - expected).max() < 1e-4
