"""Turns on one model between ``fit`` and the chat panel's replies.

A model being trained and a chat about it share the same weights. With JAX, Keras keeps the
weights being trained outside the model's variables for the length of an epoch (the variables
are emptied) and writes them back only when asked; with any backend, a step updates them as it
goes. A reply that read them in the middle of a step would see nothing, or half a step.

So the two take turns. ``fit`` holds the model from its start to its end. A reply asks for a
turn and waits; at the end of a training step, a `TrainingMonitor` passed to ``fit`` writes the
trained weights back into the variables, clears the generation engine's kept key/value cache
(it was computed with older weights) and lets the waiting replies run, then training goes on.
Without a monitor a reply waits until ``fit`` returns. When ``fit`` ends (or fails) the cache is
cleared too, so the next reply reads only the trained weights.

Example:
    >>> turns = model_turns(model)  # doctest: +SKIP
    >>> with turns.reply():  # in a chat worker: waits for the end of the current step
    ...     model.generate("Hi!")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from kerasllm_widget.generation.registry import engine_for

__all__ = ["ModelTurns", "forget_generation_cache", "model_turns"]


class ModelTurns:
    """Who uses one model's weights now: a ``fit`` call or chat replies, never both.

    Example:
        >>> turns = ModelTurns()
        >>> with turns.training():
        ...     turns.training_running
        True
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._training = 0  # fit calls running (one, unless fit is nested)
        self._training_holds = False  # training owns the weights (inside or between steps)
        self._waiting = 0  # replies asking for a turn
        self._replying = 0  # replies running

    @property
    def training_running(self) -> bool:
        """True from the start of ``fit`` to its end."""
        return self._training > 0

    @property
    def replies_waiting(self) -> int:
        """Replies waiting for the end of the current training step."""
        return self._waiting

    # ---- the chat's side -------------------------------------------------------------------
    @contextlib.contextmanager
    def reply(
        self,
        cancel_event: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[bool]:
        """Holds the model for one reply; yields False if `cancel_event` was set while waiting.

        ``on_wait`` is called once if the reply has to wait for training (to say so).
        """
        with self._cv:
            self._waiting += 1
            self._cv.notify_all()
            try:
                if self._training_holds and on_wait is not None:
                    on_wait()
                while self._training_holds:
                    if cancel_event is not None and cancel_event.is_set():
                        break
                    self._cv.wait(0.1)
                granted = not self._training_holds
                if granted:
                    self._replying += 1
            finally:
                self._waiting -= 1
                self._cv.notify_all()
        try:
            yield granted
        finally:
            if granted:
                with self._cv:
                    self._replying -= 1
                    self._cv.notify_all()

    # ---- the trainer's side ----------------------------------------------------------------
    @contextlib.contextmanager
    def training(self, on_end: Callable[[], None] | None = None) -> Iterator[None]:
        """Holds the model for a whole ``fit`` (after the reply running now, if any).

        ``on_end`` runs when it ends, before replies may start again.
        """
        with self._cv:
            while self._replying:
                self._cv.wait()
            self._training += 1
            self._training_holds = True
        try:
            yield
        finally:
            try:
                if on_end is not None:
                    on_end()
            finally:
                with self._cv:
                    self._training -= 1
                    self._training_holds = self._training > 0
                    self._cv.notify_all()

    def let_replies_run(self, sync: Callable[[], None]) -> int:
        """Between two training steps: if replies wait, calls ``sync`` (weights into the
        variables), lets them run, and takes the model back when they are done. Returns how many
        replies were let through.
        """
        with self._cv:
            if not self._waiting or not self._training_holds:
                return 0
            sync()
            let_through = self._waiting
            self._training_holds = False
            self._cv.notify_all()
            while self._waiting or self._replying:
                self._cv.wait()
            self._training_holds = True
            return let_through


_turns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_turns_lock = threading.Lock()


def model_turns(model: Any) -> ModelTurns:
    """The `ModelTurns` of ``model`` (one per model, made on first use).

    Example:
        >>> model_turns(model) is model_turns(model)  # doctest: +SKIP
        True
    """
    with _turns_lock:
        turns = _turns.get(model)
        if turns is None:
            turns = _turns[model] = ModelTurns()
        return turns


def forget_generation_cache(model: Any) -> None:
    """Drops the key/value cache the generation engine kept from the last request: it holds
    keys and values computed with the weights of that time.

    Example:
        >>> forget_generation_cache(model)  # doctest: +SKIP
    """
    clear = getattr(engine_for(model), "clear_cache", None)
    if clear is not None:
        clear()
