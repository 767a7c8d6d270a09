"""Steering and model comparison against the reference implementation (transformers with a
forward hook on the same decoder layer), and the engine's promises: a new strength compiles
nothing, a steered chat never reuses keys computed without the vector."""

from __future__ import annotations

import numpy as np
import pytest

from kerasllm_widget import inspect
from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.models.llama3_backbone import Llama3Backbone
from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM
from tests.conftest import write_random_llama_checkpoint
from tests.tiny_llama import tiny_causal_lm

pytestmark = pytest.mark.reference

LAYER = 0
PROMPT = [1, 17, 250, 3, 99, 4, 311, 42]
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def ours(random_llama32_checkpoint):
    backbone = Llama3Backbone.from_checkpoint(
        load_checkpoint(str(random_llama32_checkpoint)), progress=False
    )
    return Llama3CausalLM(backbone)


@pytest.fixture(scope="module")
def reference(random_llama32_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        random_llama32_checkpoint, dtype=torch.float32
    ).eval()


def _reference_greedy(model, prompt, vector=None):
    import torch

    handle = None
    if vector is not None:
        shift = torch.tensor(vector)

        def add(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + shift, *output[1:])
            return output + shift

        handle = model.model.layers[LAYER].register_forward_hook(add)
    try:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
    finally:
        if handle is not None:
            handle.remove()
    return out[0, len(prompt) :].tolist()


def _ours_greedy(model, prompt, steering=None):
    events = list(
        model.stream(prompt, max_new_tokens=NEW_TOKENS, ignore_eos=True, steering=steering)
    )
    return events[-1].token_ids


def test_steering_vector_matches_the_reference_states(ours, reference):
    import torch

    positive = [[1, 5, 9, 200], [1, 77, 3]]
    negative = [[1, 400, 401, 402, 403]]
    vector = inspect.steering_vector(ours, positive, negative, layer=LAYER)

    def last_state(ids):
        with torch.no_grad():
            out = reference(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[LAYER + 1][0, -1].numpy().astype(np.float64)

    expected = np.mean([last_state(p) for p in positive], 0) - np.mean(
        [last_state(n) for n in negative], 0
    )
    assert vector.shape == (ours.backbone.hidden_dim,)
    np.testing.assert_allclose(vector, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_steered_greedy_tokens_match_a_reference_forward_hook(ours, reference):
    rng = np.random.default_rng(3)
    vector = (rng.standard_normal(ours.backbone.hidden_dim) * 2.0).astype(np.float32)
    plain = _ours_greedy(ours, PROMPT)
    assert plain == _reference_greedy(reference, PROMPT)
    steered = _ours_greedy(ours, PROMPT, {LAYER: vector})
    assert steered == _reference_greedy(reference, PROMPT, vector)
    assert steered != plain  # the vector changed the reply
    # Batched generation takes the same steering.
    texts = ours.generate(
        {"token_ids": np.array([PROMPT, PROMPT]), "padding_mask": np.ones((2, 8), bool)},
        max_new_tokens=NEW_TOKENS,
        steering={LAYER: vector},
        stop_token_ids=(),
    )
    assert texts["token_ids"][0, len(PROMPT) :].tolist()[: len(steered)] == steered


def test_a_new_strength_compiles_nothing():
    model = tiny_causal_lm(seed=11)
    engine = engine_for(model)
    vector = np.random.default_rng(0).standard_normal(model.backbone.hidden_dim)
    replies = []
    for strength in (1.0, 4.0, 8.0):
        before = dict(engine.trace_counts)
        replies.append(
            _ours_greedy(model, [1, 2, 3, 4], {1: (strength * vector).astype(np.float32)})
        )
        if strength != 1.0:  # the first request compiled the steered programs
            assert dict(engine.trace_counts) == before
    assert len({tuple(r) for r in replies}) > 1


def test_a_steered_chat_turn_does_not_reuse_unsteered_keys():
    from kerasllm_widget.chat.chat_state import ChatState

    model = tiny_causal_lm(seed=12)
    vector = (np.random.default_rng(1).standard_normal(model.backbone.hidden_dim) * 3).astype(
        np.float32
    )
    chat = ChatState(model)
    chat.send("hello", max_new_tokens=4, temperature=0)
    steered_after_plain = [
        e for e in chat.stream("again", max_new_tokens=6, temperature=0, steering={0: vector})
    ][-1].token_ids
    fresh = ChatState(model, steering={0: vector})
    fresh.messages[:] = [dict(m) for m in chat.messages[:2]]
    from kerasllm_widget.training.turns import forget_generation_cache

    forget_generation_cache(model)
    expected = [e for e in fresh.stream("again", max_new_tokens=6, temperature=0)][-1].token_ids
    assert steered_after_plain == expected


def test_steering_refuses_what_does_not_fit(ours):
    hidden = ours.backbone.hidden_dim
    with pytest.raises(ValueError, match=r"steering layer 9 .* use 0\.\.1"):
        ours.generate([1, 2], max_new_tokens=2, steering={9: np.zeros(hidden)})
    with pytest.raises(ValueError, match=rf"shape \(3,\); .* \({hidden},\)"):
        ours.generate([1, 2], max_new_tokens=2, steering={0: np.zeros(3)})
    with pytest.raises(ValueError, match="layer=5"):
        inspect.steering_vector(ours, [[1, 2]], [[3, 4]], layer=5)


def test_compare_models_matches_the_reference(random_llama32_checkpoint, ours, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    other_folder = write_random_llama_checkpoint(tmp_path / "other", seed=1)
    other = Llama3CausalLM(
        Llama3Backbone.from_checkpoint(load_checkpoint(str(other_folder)), progress=False)
    )
    ids = np.random.default_rng(5).integers(0, 512, size=30)
    result = inspect.compare_models(ours, other, ids, top_k=3)

    def reference_logprobs(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        return torch.log_softmax(logits, -1).numpy()

    log_a = reference_logprobs(random_llama32_checkpoint)
    log_b = reference_logprobs(other_folder)
    steps = np.arange(len(ids) - 1)
    np.testing.assert_allclose(result.logprobs_a, log_a[steps, ids[1:]], atol=1e-4)
    np.testing.assert_allclose(result.logprobs_b, log_b[steps, ids[1:]], atol=1e-4)
    kl = (np.exp(log_a[:-1]) * (log_a[:-1] - log_b[:-1])).sum(-1)
    assert kl.min() > 1e-3  # two different models
    np.testing.assert_allclose(result.kl, kl, rtol=1e-3)
    assert result.top_ids_a.shape == (30, 3)
    # A model compared with itself: identical scores, zero divergence.
    same = inspect.compare_models(ours, ours, ids)
    np.testing.assert_allclose(same.kl, 0.0, atol=1e-6)
