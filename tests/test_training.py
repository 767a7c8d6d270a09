"""`fit`, `evaluate` and `predict` on text through Keras' trainer, and what the loss counts."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from tiny_llama import CORPUS, tiny_causal_lm

from kerasllm_widget.training.data import TextDataset, as_keras_data, peek_text_stream

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there, how can I help?"},
    ],
]


@pytest.fixture(scope="module")
def model():
    model = tiny_causal_lm(seed=0)
    model.compile()
    return model


def reference_loss(logits, labels, weights):
    """Token-weighted mean cross-entropy, in numpy."""
    logits = logits.astype(np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return float(-(picked * weights).sum() / weights.sum())


def test_loss_falls_when_overfitting_eight_strings():
    model = tiny_causal_lm(seed=3)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=3e-3))
    before = model.evaluate(CORPUS, batch_size=4, return_dict=True, verbose=0)
    history = model.fit(CORPUS, batch_size=4, epochs=12, verbose=0)
    after = model.evaluate(CORPUS, batch_size=4, return_dict=True, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 12
    assert losses[-1] < 0.5 * losses[0]
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > before["accuracy"] + 0.2


def test_masked_positions_contribute_no_loss(model):
    x, labels, weights = model.preprocessor(CORPUS[:4], sequence_length=48)
    weights = weights.astype("float32")
    assert 0 < weights.sum() < weights.size  # some real tokens, some padding
    assert not x["padding_mask"][:, -1].any()  # nothing cut, so a longer padding changes nothing

    def loss_of(token_ids, labels):
        features = {"token_ids": token_ids, "padding_mask": x["padding_mask"]}
        return model.evaluate(
            features, labels, sample_weight=weights, batch_size=4, return_dict=True, verbose=0
        )["loss"]

    loss = loss_of(x["token_ids"], labels)
    logits = np.asarray(model(x))
    assert loss == pytest.approx(reference_loss(logits, labels, weights), rel=1e-5)

    # Scramble everything the mask hides: padded inputs and the labels of zero-weight positions.
    rng = np.random.default_rng(0)
    scrambled_ids = np.where(x["padding_mask"], x["token_ids"], rng.integers(0, 320, labels.shape))
    scrambled_labels = np.where(weights > 0, labels, rng.integers(0, 320, labels.shape))
    assert (scrambled_labels != labels).any()
    assert loss_of(
        scrambled_ids.astype("int32"), scrambled_labels.astype("int32")
    ) == pytest.approx(loss, abs=1e-6)
    # And the mean is over weighted tokens, not over batch * length: padding does not dilute it.
    longer_x, longer_labels, longer_weights = model.preprocessor(CORPUS[:4], sequence_length=96)
    longer = model.evaluate(
        longer_x,
        longer_labels,
        sample_weight=longer_weights.astype("float32"),
        batch_size=4,
        return_dict=True,
        verbose=0,
    )["loss"]
    assert longer == pytest.approx(loss, rel=1e-4)


def test_conversations_weight_only_the_assistant_turns(model):
    x, labels, weights = model.preprocessor(CONVERSATIONS, sequence_length=64)
    assistant = weights.astype(bool)
    assert 0 < assistant.sum() < x["padding_mask"].sum()  # prompts are real tokens, not trained
    evaluated = model.evaluate(CONVERSATIONS, batch_size=2, return_dict=True, verbose=0)["loss"]
    # evaluate() cuts the batch to its bucket length; the loss over assistant tokens is the same.
    logits = np.asarray(model(x))
    assert evaluated == pytest.approx(reference_loss(logits, labels, assistant), rel=1e-4)
    assert evaluated != pytest.approx(reference_loss(logits, labels, x["padding_mask"]), rel=1e-3)


def test_fit_compiles_with_defaults_and_takes_text_validation_data():
    model = tiny_causal_lm(seed=4)
    assert not model.compiled
    history = model.fit(
        CONVERSATIONS * 2, validation_data=CORPUS[:2], batch_size=2, epochs=1, verbose=0
    )
    assert model.compiled
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.loss.reduction == "mean_with_sample_weight"
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    assert np.isfinite(history.history["val_loss"][0])


def test_fit_on_a_generator_of_strings(model):
    def stream():
        yield from CORPUS[:6]

    history = model.fit(stream(), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    is_text, _ = peek_text_stream(iter([{"token_ids": np.zeros((1, 4))}]))
    assert not is_text  # a generator of arrays is left to Keras


def test_predict_on_strings_gives_the_logits_of_the_preprocessed_text(model):
    logits = model.predict(CORPUS[:3], batch_size=2, verbose=0)
    assert logits.shape[0] == 3 and logits.shape[2] == 384
    length = logits.shape[1]
    x, _, _ = model.preprocessor(CORPUS[:3], sequence_length=length)
    np.testing.assert_allclose(logits, np.asarray(model(x)), atol=1e-5)


def test_text_dataset_buckets_lengths_and_pads_the_last_batch(model):
    data = as_keras_data(CORPUS[:5], model.preprocessor, batch_size=4)
    assert isinstance(data, TextDataset) and len(data) == 2
    (x0, labels0, weights0), (x1, labels1, weights1) = data[0], data[1]
    assert labels1.shape == weights1.shape == x1["token_ids"].shape
    longest = int(x0["padding_mask"].sum(axis=1).max())
    bucket = max(16, 1 << (longest - 1).bit_length())  # the next power of two
    assert x0["token_ids"].shape == (4, bucket) and labels0.shape == weights0.shape == (4, bucket)
    # The last batch has one real example and three rows that count for nothing.
    assert x1["token_ids"].shape[0] == 4
    assert weights1[0].sum() > 0 and weights1[1:].sum() == 0 and not x1["padding_mask"][1:].any()
    with pytest.raises(ValueError, match="y must be None"):
        model.fit(CORPUS, np.zeros(8), verbose=0)


# --- TrainingMonitor ----------------------------------------------------------------------------


def test_training_monitor_records_the_run_and_samples_each_epoch(model):
    from kerasllm_widget.widgets.training_monitor import TrainingMonitor

    monitor = TrainingMonitor(
        sample_prompt=CONVERSATIONS[1][:2], max_new_tokens=4, update_interval_s=0.0
    )
    model.fit(
        CORPUS, batch_size=4, epochs=2, validation_data=CORPUS[:2], callbacks=[monitor], verbose=0
    )
    assert monitor.status == "done"
    assert [p["step"] for p in monitor.steps] == [1, 2, 3, 4]
    assert [p["epoch"] for p in monitor.steps] == [1, 1, 2, 2]
    assert all(np.isfinite(p["loss"]) for p in monitor.steps)
    assert monitor.steps[0]["seconds"] is None and monitor.steps[-1]["seconds"] > 0
    assert monitor.steps[-1]["lr"] == pytest.approx(5e-5)  # the default AdamW's
    assert [e["epoch"] for e in monitor.epochs] == [1, 2]
    assert monitor.epochs[-1]["loss"] == pytest.approx(monitor.steps[-1]["loss"], rel=1e-5)
    assert (
        np.isfinite(monitor.epochs[-1]["val_loss"]) and "accuracy" in monitor.epochs[-1]["metrics"]
    )
    assert [s["epoch"] for s in monitor.samples] == [1, 2]
    assert monitor.sample_prompt_text == "Hello!"
    assert monitor.progress["epochs"] == 2 and monitor.progress["steps_per_epoch"] == 2
    # The samples are the model's own greedy answers, with the weights it has after the epoch.
    answer = model.generate(
        CONVERSATIONS[1][:2], max_new_tokens=4, sampler="greedy", strip_prompt=True
    )
    assert monitor.samples[-1]["text"] == answer


def test_training_monitor_stop_button_ends_training_after_the_step(model):
    from kerasllm_widget.widgets.training_monitor import STOP_REQUEST, TrainingMonitor

    monitor = TrainingMonitor(update_interval_s=0.0)

    class PressStop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:  # what the front end sends when Stop is clicked
                monitor._handle_message(monitor, {"kind": STOP_REQUEST}, [])

    model.fit(CORPUS, batch_size=2, epochs=3, callbacks=[monitor, PressStop()], verbose=0)
    assert monitor.status == "stopped"
    assert len(monitor.steps) == 1 and monitor.samples == []


def test_training_monitor_protocol_and_thinning():
    from pathlib import Path

    from kerasllm_widget.widgets.training_monitor import STOP_REQUEST, thin_points

    protocol = (Path(__file__).parents[1] / "js" / "training" / "protocol.ts").read_text()
    assert f'stop: "{STOP_REQUEST}"' in protocol
    points = [{"step": i} for i in range(1, 10001)]
    thinned = thin_points(points, 4000)
    assert len(thinned) <= 4000 and thinned[0]["step"] == 1 and thinned[-1]["step"] == 10000
    assert [p["step"] for p in thinned[-100:]] == list(range(9901, 10001))  # recent steps dense
