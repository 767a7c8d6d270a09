"""The ChatWidget's Training tab: a chat with the model being trained, taking turns with ``fit``."""

from __future__ import annotations

import threading
import time

import keras
from tiny_llama import CORPUS, tiny_causal_lm

from kerasllm_widget.chat.chat_state import ChatState
from kerasllm_widget.training.turns import ModelTurns, forget_generation_cache, model_turns
from kerasllm_widget.widgets.chat_widget import TRAINING_WAIT_MESSAGE, ChatWidget
from kerasllm_widget.widgets.training_monitor import TrainingMonitor

GREEDY = {"temperature": 0.0, "max_new_tokens": 8}


def fresh_reply(model, history: list[dict], text: str) -> str:
    """What a new chat with this history answers, computed from scratch on today's weights."""
    forget_generation_cache(model)
    state = ChatState(model)
    state.messages[:] = [dict(m) for m in history]
    return state.send(text, **GREEDY)


def until(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_training_monitor_becomes_the_training_tab():
    model = tiny_causal_lm(seed=5)
    chat = ChatWidget(model)
    try:
        assert chat.training is None and chat.get_state()["training"] is None
        monitor = chat.training_monitor(sample_prompt="Hello!", title="LoRA")
        assert isinstance(monitor, TrainingMonitor) and chat.training is monitor
        assert monitor.title == "LoRA" and monitor.sample_prompt == "Hello!"
        # The front end receives a reference to the monitor's own widget model.
        assert chat.get_state()["training"] == f"IPY_MODEL_{monitor.model_id}"
        other = TrainingMonitor()
        assert ChatWidget(model, training=other).training is other
    finally:
        chat.close()


def test_a_reply_sent_during_fit_runs_between_two_steps_on_the_trained_weights():
    model = tiny_causal_lm(seed=6)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=3e-2))
    chat = ChatWidget(model, **GREEDY)
    before = fresh_reply(model, [], "Hello!")
    monitor = chat.training_monitor(update_interval_s=0.0)
    turns = model_turns(model)
    seen: dict = {}

    class SendDuringStep(keras.callbacks.Callback):
        """Listed before the monitor: at the end of step 3 a message arrives from the panel."""

        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                seen["handle"] = chat.send("Hello!")
                seen["waited"] = until(lambda: turns.replies_waiting == 1)
                seen["status while waiting"] = dict(chat.status)
                seen["done while waiting"] = seen["handle"].done

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 3:  # the reply has ended before the next step begins
                seen["done before step 4"] = seen["handle"].done
                seen["expected"] = fresh_reply(self.model, [], "Hello!")
                chat.reset()

    model.fit(
        CORPUS,
        batch_size=2,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[SendDuringStep(), monitor],
    )
    try:
        assert seen["waited"] and not seen["done while waiting"]
        assert seen["status while waiting"]["message"] == TRAINING_WAIT_MESSAGE
        assert seen["done before step 4"]
        reply = seen["handle"].result(timeout=60)
        # The reply came from the weights after three steps: not the untrained ones.
        assert reply == seen["expected"]
        assert reply != before
        assert monitor.status == "done" and len(monitor.steps) == 4
        assert chat.status["message"] == ""
    finally:
        chat.close()


def test_the_next_turn_after_fit_reads_only_the_trained_weights():
    """A chat turn reuses the keys kept from the last one; after fit those are out of date."""
    model = tiny_causal_lm(seed=7)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=3e-2))
    chat = ChatWidget(model, **GREEDY)
    try:
        chat.send("Hello!").result(timeout=120)
        history = chat.history
        model.fit(CORPUS, batch_size=4, epochs=2, verbose=0)
        after = chat.send("What is the capital of France?").result(timeout=120)
        assert after == fresh_reply(model, history, "What is the capital of France?")
    finally:
        chat.close()


def test_fit_waits_for_the_reply_being_made_and_stop_ends_a_waiting_reply():
    turns = ModelTurns()
    started, finish = threading.Event(), threading.Event()

    def fit():
        with turns.training():
            started.set()
            finish.wait(10)

    thread = threading.Thread(target=fit)
    with turns.reply() as granted:
        assert granted
        thread.start()
        assert not started.wait(0.3)  # fit cannot begin while a reply reads the weights
    assert started.wait(5) and turns.training_running
    cancel = threading.Event()
    cancel.set()
    with turns.reply(cancel) as granted:
        assert not granted  # stopped while waiting for training: never ran
    finish.set()
    thread.join()
    assert not turns.training_running
