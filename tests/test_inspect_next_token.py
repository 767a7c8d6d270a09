"""Next-token distributions and sequence scores on SmolLM2 against the reference's logits."""

from __future__ import annotations

import numpy as np
import pytest
from inspect_support import smollm2_model

from kerasllm_widget import inspect

TEXT = (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital"
)


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def reference_probs(smollm2_reference):
    import torch

    reference, tokenizer = smollm2_reference
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = reference(torch.tensor([ids])).logits[0].double().numpy()
    return np.asarray(ids), logits


def test_entropy_of_known_distributions():
    assert inspect.entropy(np.full(8, 1 / 8)) == pytest.approx(np.log(8))
    assert inspect.entropy(np.array([1.0, 0.0, 0.0])) == 0.0  # 0 log 0 counts as 0
    logits = np.random.default_rng(0).normal(size=(3, 50))
    assert np.allclose(inspect.entropy(logits, from_logits=True), inspect.entropy(softmax(logits)))


@pytest.mark.reference
def test_next_token_matches_reference(reference_probs):
    ids, logits = reference_probs
    model = smollm2_model()
    dist = inspect.next_token(model, TEXT, top_k=5)
    expected = softmax(logits[-1])
    assert dist.context_length == len(ids)  # SmolLM2 adds no start token
    assert dist.token_ids.tolist() == np.argsort(-expected)[:5].tolist()
    assert np.abs(dist.probs - expected[dist.token_ids]).max() < 1e-4
    assert dist.entropy == pytest.approx(inspect.entropy(expected), abs=1e-3)
    assert dist.pieces[0] == "␣of" and dist.probs[0] > 0.5
    # Temperature divides the logits, as the sampler does.
    cool = inspect.next_token(model, ids, top_k=3, temperature=0.5)
    assert np.abs(cool.probs - softmax(logits[-1] / 0.5)[cool.token_ids]).max() < 1e-4
    assert cool.entropy < dist.entropy
    assert cool.to_dict()["pieces"] == cool.pieces
    with pytest.raises(ValueError, match="temperature"):
        inspect.next_token(model, ids, temperature=0)


@pytest.mark.reference
def test_score_gives_every_token_its_probability_and_entropy(reference_probs):
    ids, logits = reference_probs
    scores = inspect.score(smollm2_model(), ids, top_k=4, chunk=7)  # several chunks
    expected = softmax(logits)
    assert np.isnan(scores.probs[0]) and np.isnan(scores.entropy[0])
    actual = scores.probs[1:]
    wanted = expected[np.arange(len(ids) - 1), ids[1:]]
    assert np.abs(actual - wanted).max() < 1e-4
    assert np.abs(scores.entropy[1:] - inspect.entropy(expected[:-1])).max() < 1e-3
    assert scores.top_ids[1:, 0].tolist() == expected[:-1].argmax(-1).tolist()
    assert (np.diff(scores.top_probs[1:], axis=1) <= 0).all()  # most likely first
    assert len(scores.pieces) == len(ids) and scores.pieces[0] == "<|im_start|>"
    assert np.allclose(scores.logprobs[1:], np.log(actual))
