"""Samplers on hand-made logits: each rule keeps exactly the tokens it should, seeds reproduce."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kerasllm_widget.generation.samplers import (
    GreedySampler,
    MinPSampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    apply_repetition_penalty,
    get_sampler,
    sample_next_token,
)
from kerasllm_widget.kernels import products

# Probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 over a 6-token vocabulary (plus 200 tokens of ~0).
PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
LOGITS = np.concatenate([np.log(PROBS), np.full(200, -40.0)]).astype(np.float32)
DRAWS = 4000


def frequencies(sampler: Sampler, logits=LOGITS, seed=0) -> np.ndarray:
    """How often each token is drawn over DRAWS rows sampled in one call, with the native
    kernel's candidate paths where it builds (as the engine's CPU programs run them)."""
    batch = jnp.broadcast_to(jnp.asarray(logits), (DRAWS, logits.shape[-1]))
    draw = jax.jit(sample_next_token, static_argnames="plan")
    plan = sampler.plan._replace(kernels=products.enabled())
    tokens = np.asarray(draw(batch, jax.random.key(seed), plan=plan, params=sampler.params()))
    return np.bincount(tokens, minlength=logits.shape[-1]) / DRAWS


def expected(keep: list[int], temperature: float = 1.0) -> np.ndarray:
    p = np.zeros(LOGITS.shape[0])
    scaled = PROBS[keep] ** (1.0 / temperature)
    p[keep] = scaled / scaled.sum()
    return p


def test_greedy_takes_the_argmax():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 1000)), jnp.float32)
    sampler = GreedySampler()
    tokens = sample_next_token(logits, jax.random.key(0), sampler.plan, sampler.params())
    assert np.asarray(tokens).tolist() == np.asarray(logits).argmax(-1).tolist()
    assert Sampler(temperature=0.0).plan.mode == TopKSampler(k=1).plan.mode == "greedy"


@pytest.mark.parametrize(
    "sampler, keep",
    [
        (RandomSampler(), [0, 1, 2, 3, 4, 5]),
        (TopKSampler(k=3), [0, 1, 2]),
        (TopPSampler(p=0.7), [0, 1, 2]),  # 0.4 + 0.25 < 0.7: the third token is needed
        (TopPSampler(p=0.65), [0, 1]),  # 0.4 + 0.25 reaches 0.65 exactly
        (Sampler(top_k=40, top_p=0.7), [0, 1, 2]),  # the narrow path (top-k <= 64)
        (Sampler(top_k=100, top_p=0.7), [0, 1, 2]),  # the sorting path
        (MinPSampler(p=0.3), [0, 1, 2]),  # p >= 0.3 * 0.4 = 0.12
        (Sampler(top_k=5, min_p=0.2), [0, 1, 2, 3]),  # p >= 0.08
    ],
    ids=["random", "top_k", "top_p", "top_p_exact", "narrow", "sorted", "min_p", "top_k_min_p"],
)
def test_each_rule_keeps_the_right_tokens_with_the_right_odds(sampler, keep):
    observed = frequencies(sampler)
    assert set(np.flatnonzero(observed)) <= set(keep)
    assert np.abs(observed - expected(keep)).max() < 0.03


def test_temperature_flattens_and_sharpens():
    hot, cold = (
        frequencies(RandomSampler(temperature=2.0)),
        frequencies(RandomSampler(temperature=0.5)),
    )
    assert np.abs(hot - expected(list(range(6)), 2.0)).max() < 0.03
    assert np.abs(cold - expected(list(range(6)), 0.5)).max() < 0.03
    assert cold[0] > PROBS[0] > hot[0]


def test_seed_reproduces_and_another_seed_differs():
    sampler = RandomSampler(temperature=1.0)
    a, b, c = (
        frequencies(sampler, seed=7),
        frequencies(sampler, seed=7),
        frequencies(sampler, seed=8),
    )
    assert (a == b).all() and (a != c).any()


def test_repetition_penalty_is_transformers_rule():
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 50)).astype(np.float32)
    seen_ids = [[1, 5, 7, 7], [0, 2, 49, 3]]
    seen = np.zeros((2, 50), bool)
    for row, ids in enumerate(seen_ids):
        seen[row, ids] = True
    ours = np.asarray(apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), 1.3))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(
        torch.tensor(seen_ids), torch.tensor(logits)
    ).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_repetition_penalty_changes_the_greedy_choice():
    logits = jnp.asarray([[2.0, 1.9, 0.0]])
    seen = jnp.asarray([[True, False, False]])
    sampler = Sampler(temperature=0.0, repetition_penalty=1.5)
    token = sample_next_token(logits, jax.random.key(0), sampler.plan, sampler.params(), seen)
    assert int(token[0]) == 1


def test_samplers_by_name_and_keras_hub_objects():
    assert get_sampler("greedy").is_greedy
    assert get_sampler("top_k").top_k == 5
    assert get_sampler("top_p").top_p == 0.1
    assert get_sampler("TopPSampler").top_p == 0.1
    assert get_sampler("min_p").min_p == 0.05
    assert not get_sampler("random").is_greedy
    sampler = TopKSampler(k=3, seed=1)
    assert get_sampler(sampler) is sampler

    class TopKSamplerLike:  # the public knobs of keras_hub's TopKSampler
        k, temperature, seed = 7, 0.5, 3

    TopKSamplerLike.__name__ = "TopKSampler"
    converted = get_sampler(TopKSamplerLike())
    assert (converted.top_k, converted.temperature, converted.seed) == (7, 0.5, 3)
    # keras_hub's serialized form (keras_hub.samplers.serialize / get), its greedy config too.
    config = {"class_name": "TopPSampler", "config": {"p": 0.8, "k": 20, "seed": None}}
    assert (get_sampler(config).top_p, get_sampler(config).top_k) == (0.8, 20)
    assert get_sampler({"class_name": "greedy", "config": {"temperature": 1.0}}).is_greedy
    with pytest.raises(ValueError, match=r"sampler='beam' is not supported.*top_k"):
        get_sampler("beam")
    with pytest.raises(ValueError, match="Unknown sampler 'nucleus'"):
        get_sampler("nucleus")


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        Sampler(top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Sampler(temperature=-1)
    with pytest.raises(ValueError, match="repetition_penalty"):
        Sampler(repetition_penalty=0)


# A vocabulary larger than the 1024 best tokens that top-p looks at first: six likely tokens
# holding half the mass (0.2, 0.125, 0.075, 0.05, 0.03, 0.02) and 2994 sharing the other half.
WIDE = np.concatenate([np.log(PROBS * 0.5), np.full(2994, np.log(0.5 / 2994))]).astype(np.float32)


def expected_wide(keep: list[int]) -> np.ndarray:
    p = np.exp(WIDE.astype(np.float64))[keep]
    out = np.zeros(WIDE.shape[0])
    out[keep] = p / p.sum()
    return out


@pytest.mark.parametrize(
    "sampler, keep",
    [
        # The nucleus lies among the best 1024; the mass before token 1 is 0.2 of the whole
        # vocabulary (0.3 of the best 1024 alone, which would wrongly stop at token 0).
        (TopPSampler(p=0.3), [0, 1]),
        (TopPSampler(p=0.45), [0, 1, 2, 3]),
        # top-k within the best 1024: top-p applies to the 200 kept (0.53 of the mass), where
        # token 0 alone is 0.376
        (Sampler(top_k=200, top_p=0.5), [0, 1]),
    ],
    ids=["top_p", "top_p_four", "wide_top_k"],
)
def test_top_p_over_a_large_vocabulary_keeps_the_right_tokens(sampler, keep):
    assert sampler.plan.mode == "sorted"
    observed = frequencies(sampler, logits=WIDE)
    assert set(np.flatnonzero(observed)) <= set(keep)
    assert np.abs(observed - expected_wide(keep)).max() < 0.03


def test_top_p_beyond_the_best_1024_tokens_sorts_the_vocabulary():
    # A flat distribution: the nucleus of p=0.5 is the first 1500 of 3000 tokens (ties go to
    # the lower id), more than the best 1024 hold, so the whole vocabulary is sorted.
    flat = np.zeros(3000, np.float32)
    observed = frequencies(TopPSampler(p=0.5), logits=flat)
    assert set(np.flatnonzero(observed)) <= set(range(1500))
    assert observed[:1500].sum() == 1.0 and (observed[1000:1500] > 0).sum() > 300


@pytest.mark.parametrize(
    "sampler, keep",
    [
        (RandomSampler(), list(range(3000))),  # half the draws come from outside the best 64
        (MinPSampler(p=0.3), [0, 1, 2]),  # p >= 0.06: nothing outside the best 64 is left
    ],
    ids=["random", "min_p"],
)
def test_sampling_the_whole_distribution_of_a_large_vocabulary(sampler, keep):
    assert sampler.plan.mode == "full"
    observed = frequencies(sampler, logits=WIDE)
    assert set(np.flatnonzero(observed)) <= set(keep)
    wanted = expected_wide(keep)
    assert np.abs(observed[:6] - wanted[:6]).max() < 0.03
    assert abs(observed[6:].sum() - wanted[6:].sum()) < 0.03
