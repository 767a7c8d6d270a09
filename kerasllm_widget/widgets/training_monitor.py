"""`TrainingMonitor`: a Keras callback that is also a widget, drawing training as it happens.

Pass it to ``fit(callbacks=[monitor])`` and display it: a loss curve per step with the epoch means
(and validation loss), the learning rate, the time per step, progress, and at the end of each
epoch a sample answer to a fixed prompt from the model being trained. A Stop button ends training
after the current step (Keras' ``model.stop_training``).

``ChatWidget.training_monitor()`` makes one that is also the chat's Training tab; chat replies
sent while it trains run between two steps, on the weights trained so far (see
`kerasllm_widget.training.turns`).

Durable state is in traitlets (``steps``, ``epochs``, ``samples``, ``progress``, ``status``), so
a view displayed again, or a second one, shows the whole run. Step points are sent at most every
``update_interval_s`` seconds, and a long run's curve is thinned to ``max_points`` points.

Example:
    >>> monitor = TrainingMonitor(sample_prompt="What is Keras?")  # doctest: +SKIP
    >>> monitor  # displays the panel  # doctest: +SKIP
    >>> model.fit(data, epochs=3, callbacks=[monitor])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import anywidget
import keras
import traitlets

from kerasllm_widget.training.turns import forget_generation_cache, model_turns
from kerasllm_widget.widgets._bundle import bundle
from kerasllm_widget.widgets.training_start import StartingWeights

log = logging.getLogger(__name__)

__all__ = ["TrainingMonitor", "STOP_REQUEST"]

# Front end to kernel; mirrored in js/training/protocol.ts.
STOP_REQUEST = "training.stop"


def _number(value: Any) -> float | None:
    """A finite float for JSON, or None (NaN/inf losses are drawn as gaps, not as errors)."""
    try:
        number = float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def thin_points(points: list[dict], max_points: int) -> list[dict]:
    """Every other point of the older half when there are too many: the curve keeps its shape,
    recent steps stay dense, and the list stays bounded.

    Example:
        >>> len(thin_points([{"step": i} for i in range(10)], 8))
        8
    """
    while len(points) > max_points:
        half = len(points) // 2
        points = points[:half:2] + points[half:]
    return points


class TrainingMonitor(anywidget.AnyWidget, keras.callbacks.Callback):
    """Live loss and learning-rate curves, time per step and sample generations for ``fit``.

    Args:
        sample_prompt: text or a conversation to answer at the end of each epoch (None: no
            samples). Needs a model with a preprocessor.
        max_new_tokens: length of each sample answer.
        title: shown in the panel's header.
        update_interval_s: at most one update of the step curve per this many seconds.
        max_points: the step curve is thinned beyond this many points.
        compare_start: for a full fine-tune, keep a copy of the starting weights so that each
            sample is also scored under them (doubles the weights' memory). A LoRA run always
            compares, for free: its starting weights are the base model without the adapters.
            See `training_start`.

    Example:
        >>> monitor = TrainingMonitor(sample_prompt=[{"role": "user", "content": "Hi!"}])  # doctest: +SKIP
        >>> model.fit(conversations, epochs=3, callbacks=[monitor])  # doctest: +SKIP
    """

    _esm = bundle("training")
    _css = bundle("training", "css")

    title = traitlets.Unicode("Training").tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)  # idle | training | done | stopped | error
    steps = traitlets.List().tag(sync=True)  # {step, epoch, loss, lr, seconds}
    epochs = traitlets.List().tag(sync=True)  # {epoch, loss, val_loss, metrics, seconds}
    # {epoch, prompt, text, compare?}: compare (`StartingWeights.compare`) scores the reply
    # under the starting and the current weights.
    samples = traitlets.List().tag(sync=True)
    progress = traitlets.Dict().tag(sync=True)  # {epoch, epochs, step, steps_per_epoch, ...}
    sample_prompt_text = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        sample_prompt: Any = None,
        max_new_tokens: int = 32,
        title: str = "Training",
        update_interval_s: float = 0.25,
        max_points: int = 4000,
        compare_start: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(title=title, **kwargs)
        keras.callbacks.Callback.__init__(self)
        self.sample_prompt = sample_prompt
        self.max_new_tokens = int(max_new_tokens)
        self.update_interval_s = float(update_interval_s)
        self.max_points = int(max_points)
        self.compare_start = bool(compare_start)
        self._start: StartingWeights | None = None
        self.sample_prompt_text = _prompt_text(sample_prompt)
        self._pending: list[dict] = []
        self._last_sync = 0.0
        self._step = 0
        self._epoch = 0
        self._epoch_started = 0.0
        self._last_batch_end: float | None = None
        self.on_msg(self._handle_message)

    # ----------------------------------------------------------------- front end
    def _handle_message(self, _widget, content: Any, _buffers) -> None:
        if isinstance(content, dict) and content.get("kind") == STOP_REQUEST:
            self.stop()

    def stop(self) -> None:
        """Ends training after the current step (what the Stop button does).

        Example:
            >>> monitor.stop()  # doctest: +SKIP
        """
        model = self._model
        if model is not None and self.status == "training":
            model.stop_training = True
            self.status = "stopping"

    def _flush(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self._pending or (not force and now - self._last_sync < self.update_interval_s):
            return
        # Reading the learning rate mid-epoch makes Keras copy the training state back into the
        # variables on JAX, so it is read once per update, for the newest step.
        self._pending[-1]["lr"] = self._learning_rate()
        self.steps = thin_points(self.steps + self._pending, self.max_points)
        self._pending = []
        self._last_sync = now

    # ----------------------------------------------------------------- Keras callback
    def on_train_begin(self, logs: dict | None = None) -> None:
        params = self.params or {}
        self.steps, self.epochs, self.samples, self.error = [], [], [], ""
        self._pending, self._step, self._last_batch_end = [], 0, None
        self.progress = {
            "epoch": 0,
            "epochs": params.get("epochs"),
            "step": 0,
            "steps_per_epoch": params.get("steps"),
            "seconds_per_step": None,
        }
        self.status = "training"
        if self.sample_prompt is not None:
            self._start = StartingWeights.capture(self.model, self.compare_start)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = int(epoch)
        self._epoch_started = time.perf_counter()
        self.progress = {**self.progress, "epoch": self._epoch + 1, "step": 0}

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        # Wall time between consecutive step ends: the first step of a run also compiles, so it
        # is shown but kept out of the time per step.
        seconds = None if self._last_batch_end is None else now - self._last_batch_end
        self._last_batch_end = now
        self._step += 1
        self._pending.append(
            {
                "step": self._step,
                "epoch": self._epoch + 1,
                "loss": _number((logs or {}).get("loss")),
                "lr": None,  # read at flush time, see `_flush`
                "seconds": seconds,
            }
        )
        self.progress = {
            **self.progress,
            "step": int(batch) + 1,
            "seconds_per_step": seconds
            if seconds is not None
            else self.progress.get("seconds_per_step"),
        }
        self._flush()
        # Chat replies that wait for the model run now, between two steps, on the trained
        # weights; the time they take is not counted as training time.
        if model_turns(self._model).let_replies_run(self._weights_for_replies):
            self._last_batch_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        self._flush(force=True)
        summary = {
            "epoch": int(epoch) + 1,
            "loss": _number(logs.pop("loss", None)),
            "val_loss": _number(logs.pop("val_loss", None)),
            "metrics": {k: _number(v) for k, v in logs.items()},
            "seconds": time.perf_counter() - self._epoch_started,
        }
        self.epochs = [*self.epochs, summary]
        # The clock restarts so that the sample's generation does not count as a training step.
        sample = self._sample(int(epoch) + 1)
        if sample is not None:
            self.samples = [*self.samples, sample]
        self._last_batch_end = time.perf_counter()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._flush(force=True)
        stopped = self._model is not None and getattr(self._model, "stop_training", False)
        self.status = "stopped" if stopped or self.status == "stopping" else "done"

    # ----------------------------------------------------------------- helpers
    def _learning_rate(self) -> float | None:
        if self._model is None:
            return None
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        try:
            return _number(optimizer.learning_rate)
        except Exception:  # an optimizer without a readable learning rate: draw none
            return None

    def _weights_for_replies(self) -> None:
        model = self.model  # on JAX this writes the trained state back into the variables
        forget_generation_cache(model)

    def _sample(self, epoch: int) -> dict | None:
        if self.sample_prompt is None:
            return None
        model = self.model  # on JAX this also copies the trained state back into the variables
        if getattr(model, "preprocessor", None) is None or not hasattr(model, "generate"):
            return None
        try:
            forget_generation_cache(model)  # the last sample's keys came from older weights
            text = model.generate(
                self.sample_prompt,
                max_new_tokens=self.max_new_tokens,
                sampler="greedy",
                strip_prompt=True,
            )
        except Exception as error:  # a failed sample must not end the training run
            log.exception("TrainingMonitor: sample generation failed")
            self.error = f"sample generation failed: {error}"
            return None
        sample = {"epoch": epoch, "prompt": self.sample_prompt_text, "text": str(text)}
        if self._start is not None:
            try:
                sample["compare"] = self._start.compare(model, self.sample_prompt, str(text))
            except Exception as error:  # a failed comparison must not end the training run
                log.exception("TrainingMonitor: scoring under the starting weights failed")
                self.error = f"comparing with the starting weights failed: {error}"
        return sample


def _prompt_text(prompt: Any) -> str:
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):  # a conversation: show its last user message
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
    return str(prompt)
