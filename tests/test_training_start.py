"""`TrainingMonitor`'s before/after: each epoch's sample scored under the starting weights (the
base model for LoRA; a copy, when asked, for a full fine-tune) and the current ones, checked
against an untrained twin of the model built from the same seed."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from tiny_llama import CORPUS, tiny_causal_lm

from kerasllm_widget import inspect

PROMPT = [{"role": "user", "content": "Hello!"}]


def _log_probs(model, prompt, reply) -> np.ndarray:
    """Log-probabilities of the reply's tokens after the prompt (the reference, from scratch)."""
    preprocessor = model.preprocessor
    prompt_ids = np.asarray(preprocessor.generate_preprocess(prompt)["token_ids"]).reshape(-1)
    ids = np.concatenate([prompt_ids, np.asarray(preprocessor.tokenizer(reply)).reshape(-1)])
    logits = inspect.run_with_hooks(model, ids)[0].astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    steps = np.arange(prompt_ids.size - 1, ids.size - 1)
    return log_probs[steps, ids[steps + 1]]


def _fit(model, **monitor_options):
    from kerasllm_widget.widgets.training_monitor import TrainingMonitor

    monitor = TrainingMonitor(
        sample_prompt=PROMPT, max_new_tokens=6, update_interval_s=0.0, **monitor_options
    )
    model.fit(CORPUS, batch_size=4, epochs=1, callbacks=[monitor], verbose=0)
    return monitor


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_samples_are_scored_under_the_starting_and_the_current_weights(lora):
    model = tiny_causal_lm(seed=21)
    if lora:
        model.backbone.enable_lora(4)
    # Fast enough to move the model in two steps, slow enough that it still writes a reply.
    rate = 3e-2 if lora else 3e-3
    model.compile(optimizer=keras.optimizers.AdamW(rate, weight_decay=0.0))
    monitor = _fit(model, compare_start=not lora)
    untrained = tiny_causal_lm(seed=21)  # the same starting weights, never trained

    assert [s["epoch"] for s in monitor.samples] == [1]
    assert monitor.samples[0]["text"]
    for sample in monitor.samples:
        compare = sample["compare"]
        assert compare["start"] == ("lora" if lora else "copy")
        assert len(compare["pieces"]) == len(compare["logprob_start"]) == len(compare["kl"])
        np.testing.assert_allclose(
            compare["logprob_start"], _log_probs(untrained, PROMPT, sample["text"]), atol=2e-3
        )
    last = monitor.samples[-1]
    # The current weights: the model as training left it.
    np.testing.assert_allclose(
        last["compare"]["logprob_now"], _log_probs(model, PROMPT, last["text"]), atol=2e-3
    )
    assert last["compare"]["mean_kl"] > 1e-3  # training moved the model
    assert monitor.error == ""


def test_a_full_fine_tune_keeps_no_copy_unless_asked():
    model = tiny_causal_lm(seed=22)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    monitor = _fit(model)
    assert monitor.samples and all("compare" not in s for s in monitor.samples)
