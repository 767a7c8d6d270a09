"""The logit lens (`inspect.logit_lens`) and token attribution (`inspect.attribution`) against
the reference implementation: transformers' hidden states read through its own final norm and
output projection, torch autograd through ``inputs_embeds`` with the same formulas, and the
attention rollout computed in numpy from its eager attentions."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from inspect_support import eager_attention

from kerasllm_widget import inspect
from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.inspect import lens as lens_module
from kerasllm_widget.models.llama3_backbone import Llama3Backbone

pytestmark = pytest.mark.reference

FOX = "The quick brown fox jumps over the lazy dog because it was"


@pytest.fixture(scope="module")
def ours(random_llama32_backbone):
    return random_llama32_backbone


@pytest.fixture(scope="module")
def reference(random_llama32_eager_reference):
    return random_llama32_eager_reference


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(1).integers(0, 512, size=24)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf, smollm2_reference):
    """Our SmolLM2 backbone, transformers' SmolLM2 and the token ids of `FOX`."""
    ckpt = load_checkpoint(str(smollm2_gguf))
    try:
        backbone = Llama3Backbone.from_checkpoint(ckpt, progress=False)
    finally:
        ckpt.close()
    model, tokenizer = smollm2_reference
    return backbone, model, np.asarray(tokenizer(FOX)["input_ids"])


def _close(actual, expected, relative):
    scale = np.abs(expected).max()
    assert scale > 1e-6  # not degenerate
    np.testing.assert_allclose(actual, expected, atol=relative * scale, rtol=0)


# ----------------------------------------------------------------------------- logit lens


def _reference_lens_logits(model, ids) -> np.ndarray:
    """``[layers, T, vocabulary]`` float64: each decoder layer's output through the model's own
    final norm and output projection. transformers' last hidden state already is the final
    norm's output, so the last row is the model's logits themselves."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(np.asarray(ids)[None]), output_hidden_states=True)
        layers = model.config.num_hidden_layers
        rows = [
            model.lm_head(model.model.norm(out.hidden_states[i + 1]))[0] for i in range(layers - 1)
        ]
        rows.append(out.logits[0])
    return torch.stack(rows).double().numpy()


def _check_lens(lens, logits: np.ndarray, ids: np.ndarray, top_k: int) -> None:
    layers, length, _ = logits.shape
    assert lens.top_ids.shape == lens.top_probs.shape == (layers, length, top_k)
    assert lens.target_rank.shape == (layers, length - 1)
    assert lens.entropy.shape == (layers, length)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    probs = np.exp(log_p)
    for i in range(layers):
        # Our probabilities are the reference's at our ids, and they are its top k.
        _close(lens.top_probs[i], np.take_along_axis(probs[i], lens.top_ids[i], -1), 1e-3)
        _close(lens.top_probs[i], -np.sort(-probs[i], axis=-1)[:, :top_k], 1e-3)
        _close(lens.entropy[i], -(probs[i] * log_p[i]).sum(-1), 1e-3)
        # The rank of the next token: exact, up to logits the two computations could order
        # either way (within 1e-4 of the largest).
        targets = logits[i, np.arange(length - 1), ids[1:]][:, None]
        slack = 1e-4 * np.abs(logits[i]).max()
        lowest = (logits[i, :-1] > targets + slack).sum(-1)
        highest = (logits[i, :-1] > targets - slack).sum(-1)
        assert np.all(lowest <= lens.target_rank[i]) and np.all(lens.target_rank[i] <= highest)
        _close(lens.target_prob[i], probs[i, np.arange(length - 1), ids[1:]], 1e-3)
    assert lens.target_rank.max() > 0  # not trivially all top
    # The last position follows the model's own choice there through the layers.
    choice = lens.top_ids[-1, -1, 0]
    _close(lens.final_prob, probs[:, -1, choice], 1e-3)
    assert lens.final_rank[-1] == 0 and lens.final_rank.shape == (layers,)
    assert np.all(lens.final_rank[lens.top_ids[:, -1, 0] == choice] == 0)


def test_logit_lens_matches_the_reference(ours, reference, token_ids):
    lens = inspect.logit_lens(ours, token_ids, top_k=5)
    _check_lens(lens, _reference_lens_logits(reference, token_ids), token_ids, 5)
    # The last row is the model's own next-token distribution.
    logits = inspect.run_with_hooks(ours, token_ids)[0]
    np.testing.assert_array_equal(lens.top_ids[-1, :, 0], logits.argmax(-1))


def test_logit_lens_in_small_chunks_gives_the_same_lens(ours, token_ids, monkeypatch):
    whole = inspect.logit_lens(ours, token_ids, top_k=3)
    # 7 rows at a time: 2 layers x 24 positions do not fill the last chunk.
    monkeypatch.setattr(lens_module, "_CHUNK_ELEMENTS", 7 * ours.vocabulary_size)
    chunked = inspect.logit_lens(ours, token_ids, top_k=3)
    np.testing.assert_array_equal(chunked.top_ids, whole.top_ids)
    np.testing.assert_array_equal(chunked.target_rank, whole.target_rank)
    np.testing.assert_allclose(chunked.top_probs, whole.top_probs, atol=1e-6)
    np.testing.assert_allclose(chunked.entropy, whole.entropy, atol=1e-5)


def test_compact_lens_is_16_bit(ours, token_ids):
    lens = inspect.logit_lens(ours, token_ids[:6], top_k=2)
    small = lens.compact()
    assert small.top_probs.dtype == np.float16 and small.entropy.dtype == np.float16
    assert small.top_ids.dtype == np.uint16 and small.target_rank.dtype == np.uint16
    np.testing.assert_array_equal(small.top_ids, lens.top_ids)
    np.testing.assert_allclose(small.top_probs, lens.top_probs, rtol=1e-3)
    table = lens.text_table(top_k=1)
    assert table.count("\n") >= ours.num_layers * 2 and str(lens.top_ids[-1, -1, 0]) in table


@pytest.mark.slow
def test_smollm2_logit_lens_matches_the_reference(smollm2):
    backbone, model, ids = smollm2
    lens = inspect.logit_lens(backbone, ids, top_k=5)
    _check_lens(lens, _reference_lens_logits(model, ids), ids, 5)


# ----------------------------------------------------------------------------- attribution


def _reference_gradient_scores(model, ids, position: int, target: int, alphas) -> np.ndarray:
    """The same formula with torch autograd through ``inputs_embeds``: the gradient of
    ``log p(target | ids[:position])`` at ``alpha * embeddings``, averaged over ``alphas``, dotted
    with the embeddings."""
    import torch

    embeddings = model.model.embed_tokens(torch.tensor(np.asarray(ids)[None, :position])).detach()
    scaled = torch.tensor(alphas, dtype=torch.float32)[:, None, None] * embeddings
    scaled.requires_grad_(True)
    logits = model(inputs_embeds=scaled).logits[:, -1]
    torch.log_softmax(logits, dim=-1)[:, target].sum().backward()
    return (scaled.grad.mean(0) * embeddings[0]).sum(-1).numpy()


def _reference_rollout(model, ids, position: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        attentions = model(
            input_ids=torch.tensor(np.asarray(ids)[None, :position]), output_attentions=True
        ).attentions
    rollout = np.eye(position)
    for probs in attentions:  # Â_L @ ... @ Â_1, built from the first layer up
        mixed = 0.5 * probs[0].double().numpy().mean(0) + 0.5 * np.eye(position)
        rollout = (mixed / mixed.sum(-1, keepdims=True)) @ rollout
    return rollout[position - 1]


def _midpoints(steps: int) -> np.ndarray:
    return (np.arange(steps) + 0.5) / steps


def test_gradient_times_input_matches_torch_autograd(ours, reference, token_ids):
    for position, target in ((9, None), (23, None), (17, 42)):
        scores = inspect.attribution(ours, token_ids, position, target_id=target)
        assert scores.shape == (position,) and scores.dtype == np.float32
        wanted = int(token_ids[position]) if target is None else target
        expected = _reference_gradient_scores(reference, token_ids, position, wanted, [1.0])
        _close(scores, expected, 1e-3)


def test_integrated_gradients_match_torch_autograd(ours, reference, token_ids, monkeypatch):
    from kerasllm_widget.inspect import attributions

    expected = _reference_gradient_scores(
        reference, token_ids, 15, int(token_ids[15]), _midpoints(12)
    )
    scores = inspect.attribution(ours, token_ids, 15, method="integrated_gradients", steps=12)
    _close(scores, expected, 1e-3)
    # At most 5 steps a pass: 11 steps run as 3 passes of 4, the last one padded.
    per_step = attributions._bytes_per_step(ours, len(token_ids))
    monkeypatch.setattr(attributions, "_GRADIENT_BUDGET_BYTES", 5 * per_step)
    assert attributions.steps_per_batch(ours, len(token_ids), 11) == 4
    batched = inspect.attribution(ours, token_ids, 15, method="integrated_gradients", steps=11)
    expected = _reference_gradient_scores(
        reference, token_ids, 15, int(token_ids[15]), _midpoints(11)
    )
    _close(batched, expected, 1e-3)


def test_attention_rollout_matches_eager_attentions(ours, reference, token_ids):
    for position in (1, 10, 23):
        scores = inspect.attribution(ours, token_ids, position, method="attention_rollout")
        expected = _reference_rollout(reference, token_ids, position)
        np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(scores.sum(), 1.0, atol=1e-5)  # rows of Â sum to one


def test_another_target_of_the_same_text_compiles_nothing(ours, token_ids):
    inspect.attribution(ours, token_ids, 3)
    inspect.attribution(ours, token_ids, 3, method="attention_rollout")
    before = inspect.compilations(ours)
    for position in (5, 11, 20):
        inspect.attribution(ours, token_ids, position, target_id=position)
        inspect.attribution(ours, token_ids, position, method="attention_rollout")
    assert inspect.compilations(ours) == before


@pytest.mark.slow
def test_smollm2_attributions_match_the_reference(smollm2):
    backbone, model, ids = smollm2
    position = len(ids) - 1
    target = int(ids[position])
    scores = inspect.attribution(backbone, ids, position)
    _close(scores, _reference_gradient_scores(model, ids, position, target, [1.0]), 1e-3)
    scores = inspect.attribution(backbone, ids, position, method="integrated_gradients", steps=8)
    _close(scores, _reference_gradient_scores(model, ids, position, target, _midpoints(8)), 1e-3)
    scores = inspect.attribution(backbone, ids, position, method="attention_rollout")
    with eager_attention(model):
        expected = _reference_rollout(model, ids, position)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- refusals


def test_bad_arguments_are_refused_with_what_is_allowed(ours, token_ids):
    with pytest.raises(
        ValueError, match=r"method='saliency' is not allowed: use one of 'grad_x_input'"
    ):
        inspect.attribution(ours, token_ids, 3, method="saliency")
    with pytest.raises(ValueError, match=r"target_position=0 is not allowed: .*>= 1 and <= 23"):
        inspect.attribution(ours, token_ids, 0)
    with pytest.raises(ValueError, match=r"target_position=24 is not allowed"):
        inspect.attribution(ours, token_ids, 24)
    with pytest.raises(ValueError, match=r"target_position=2.0 is not allowed"):
        inspect.attribution(ours, token_ids, 2.0)
    with pytest.raises(ValueError, match=r"target_id=512 is not allowed: .*>= 0 and <= 511"):
        inspect.attribution(ours, token_ids, 3, target_id=512)
    with pytest.raises(ValueError, match=r"target_id=-1 is not allowed"):
        inspect.attribution(ours, token_ids, 3, target_id=-1)
    with pytest.raises(ValueError, match=r"steps=0 is not allowed"):
        inspect.attribution(ours, token_ids, 3, method="integrated_gradients", steps=0)
    with pytest.raises(ValueError, match=r"at least two tokens"):
        inspect.attribution(ours, token_ids[:1], 1)
    with pytest.raises(ValueError, match=r"token_ids has shape \(2, 24\)"):
        inspect.attribution(ours, np.stack([token_ids, token_ids]), 3)
    with pytest.raises(ValueError, match=r"token_ids\[2\]=600"):
        inspect.logit_lens(ours, [1, 2, 600])
    with pytest.raises(ValueError, match=r"top_k=0 is not allowed: .*>= 1 and <= 512"):
        inspect.logit_lens(ours, token_ids, top_k=0)


def test_gradient_methods_name_the_backend_they_need(ours, token_ids, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    for method in ("grad_x_input", "integrated_gradients"):
        with pytest.raises(NotImplementedError, match=r"needs the JAX backend .*'torch'"):
            inspect.attribution(ours, token_ids, 3, method=method)
