"""The model's hook points (`inspect.run_with_cache`, `inspect.run_with_hooks`) against the
reference implementation: transformers' hidden states, eager attentions and a forward hook."""

from __future__ import annotations

import numpy as np
import pytest

from kerasllm_widget import inspect
from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.models.llama3_backbone import Llama3Backbone

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def ours(random_llama32_backbone):
    return random_llama32_backbone


@pytest.fixture(scope="module")
def reference(random_llama32_eager_reference):
    return random_llama32_eager_reference


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(0, 512, size=(2, 40))


def _reference_outputs(model, token_ids, **kwargs):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(token_ids), **kwargs)


def _close(actual, expected, relative):
    scale = np.abs(expected).max()
    assert scale > 1e-3  # not degenerate
    np.testing.assert_allclose(actual, expected, atol=relative * scale, rtol=0)


def test_states_match_the_reference_hidden_states(ours, reference, token_ids):
    logits, cache = inspect.run_with_cache(
        ours, token_ids, names=["embed", "layers.*.residual_out", "final_norm.out"]
    )
    out = _reference_outputs(reference, token_ids, output_hidden_states=True)
    states = [h.numpy() for h in out.hidden_states]
    layers = ours.num_layers
    assert len(states) == layers + 1
    _close(cache["embed"], states[0], 1e-4)
    for i in range(layers - 1):
        _close(cache[f"layers.{i}.residual_out"], states[i + 1], 1e-4)
    # transformers' last hidden state is the final norm's output.
    _close(cache["final_norm.out"], states[layers], 1e-4)
    _close(logits, out.logits.numpy(), 1e-4)
    assert cache["embed"].shape == (2, 40, ours.hidden_dim)


def test_attention_probabilities_match_eager_attentions(ours, reference, token_ids):
    _, cache = inspect.run_with_cache(ours, token_ids, names=["layers.*.attention.probs"])
    out = _reference_outputs(reference, token_ids, output_attentions=True)
    for i, expected in enumerate(out.attentions):
        actual = cache[f"layers.{i}.attention.probs"]
        assert actual.shape == (2, ours.num_query_heads, 40, 40)
        np.testing.assert_allclose(actual, expected.numpy(), atol=1e-5, rtol=0)


def test_zeroing_an_mlp_matches_a_reference_forward_hook(ours, reference, token_ids):
    import torch

    layer = 1
    edited = inspect.run_with_hooks(
        ours, token_ids, edits={f"layers.{layer}.mlp.out": lambda value: value * 0}
    )
    handle = reference.model.layers[layer].mlp.register_forward_hook(
        lambda module, args, output: torch.zeros_like(output)
    )
    try:
        expected = _reference_outputs(reference, token_ids).logits.numpy()
    finally:
        handle.remove()
    plain = inspect.run_with_hooks(ours, token_ids)
    assert np.abs(plain - expected).max() > 1e-2  # the edit changed something
    _close(edited, expected, 1e-4)


def test_one_sequence_and_patterns(ours, token_ids):
    logits, cache = inspect.run_with_cache(ours, token_ids[0], names=["layers.*.mlp.out"])
    assert sorted(cache) == [f"layers.{i}.mlp.out" for i in range(ours.num_layers)]
    assert logits.shape == (1, 40, ours.vocabulary_size)
    with pytest.raises(ValueError, match=r"'layers.9.mlp.out' is not a hook point"):
        inspect.run_with_cache(ours, token_ids, names=["layers.9.mlp.out"])
    with pytest.raises(ValueError, match=r"token_ids\[0\]=-1"):
        inspect.run_with_cache(ours, [-1, 2])


def test_an_edit_whose_numbers_change_compiles_once(ours, token_ids):
    def scale(value, strength):
        return value * strength

    name = "layers.0.residual_out"
    before = inspect.compilations(ours)
    results = [
        inspect.run_with_hooks(
            ours, token_ids, edits={name: inspect.Edit(scale, np.float32(strength))}
        )
        for strength in (1.0, 0.5, 0.0)
    ]
    assert inspect.compilations(ours) - before == 1
    # Strength 1 is the plain forward; the others differ from it and from each other.
    np.testing.assert_allclose(results[0], inspect.run_with_hooks(ours, token_ids), atol=1e-5)
    assert np.abs(results[1] - results[0]).max() > 1e-3
    assert np.abs(results[2] - results[1]).max() > 1e-3


@pytest.mark.slow
def test_smollm2_states_match_the_reference(smollm2_gguf, smollm2_reference):
    import torch

    ckpt = load_checkpoint(str(smollm2_gguf))
    try:
        backbone = Llama3Backbone.from_checkpoint(ckpt, progress=False)
    finally:
        ckpt.close()
    model, tokenizer = smollm2_reference
    ids = tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    _, cache = inspect.run_with_cache(
        backbone, ids, names=["layers.*.residual_out", "final_norm.out"]
    )
    with torch.no_grad():
        states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for i in range(backbone.num_layers - 1):
        _close(cache[f"layers.{i}.residual_out"], states[i + 1].numpy(), 1e-3)
    _close(cache["final_norm.out"], states[-1].numpy(), 1e-3)
