"""The ChatWidget's Steering tab and its ``steering`` property, on the chat's own worker thread.

The tab finds a direction from prompts for and against a concept (`inspect.steering_vector`)
and answers one question twice, without and with ``strength * vector`` added after the chosen
decoder layer, both greedy so that the difference between the replies is the steering alone.
The strength only scales a traced value of the engine's compiled edit (`generation.steering`):
moving the slider and asking again compiles nothing. "Apply to chat" steers the chat's own
replies (`ChatWidget.steering`).

Work runs on the chat's `GenerationWorker`, behind and never beside a chat reply (one model, one
engine); the kernel's main thread stays free, so ``steer.cancel`` (and the chat's Stop) end a
long operation at its next decode step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from kerasllm_widget import inspect
from kerasllm_widget.generation.api import stream
from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.generation.steering import steering_edits
from kerasllm_widget.widgets import steer_protocol as P
from kerasllm_widget.widgets._worker import GenerationWorker
from kerasllm_widget.widgets.worker_panel import Job, NotReady, WorkerPanel

ASK_MAX_NEW_TOKENS = 32  # a sentence or two each: the two replies are read side by side
REPLY_INTERVAL_S = 0.1  # the least time between two steer.reply messages of one reply


def check_steering(model: Any, steering: Mapping[int, Any] | None) -> dict[int, np.ndarray] | None:
    """``steering`` checked against ``model`` and copied as ``{layer: float32 [hidden]}`` (None
    or ``{}``: off). The checks are the engine's own (`steering_edits`), so what passes here
    runs at the next reply.

    Example:
        >>> check_steering(model, {6: 4.0 * vector})  # doctest: +SKIP
        {6: array([...], dtype=float32)}
    """
    if steering is None or (isinstance(steering, Mapping) and not steering):
        return None
    steering_edits(model, steering)  # raises naming the layer or vector and what is allowed
    return {int(layer): np.array(vector, np.float32) for layer, vector in steering.items()}


def default_layer(num_layers: int) -> int:
    """Where the tab's layer slider starts: a third of the way in, where directions like
    sentiment or topic are linear in the residual and steering them still reads fluently.

    Example:
        >>> default_layer(30)
        10
    """
    return max(0, min(num_layers - 1, num_layers // 3))


class SteeringPanel(WorkerPanel):
    """The kernel side of a ChatWidget's Steering tab (``steer.*`` messages).

    Args:
        chat: the `ChatWidget` (its ``chat_state``, ``system_prompt`` and ``send``).
        worker: the chat's `GenerationWorker`, where every computation of the tab runs.

    Example:
        >>> panel = SteeringPanel(chat, worker)  # doctest: +SKIP
        >>> panel.handle({"kind": "steer.open", "id": "s1"})  # doctest: +SKIP
        True
    """

    namespace = "steer."

    def __init__(self, chat: Any, worker: GenerationWorker) -> None:
        super().__init__(chat, worker)
        self._chat = chat
        self.vector: np.ndarray | None = None  # the last vector computed in the tab
        self.layer: int | None = None  # the layer it was computed (and is added) at
        self._counts = (0, 0)  # how many prompts for and against it came from

    # ---- the chat's steering (ChatWidget.steering) ----

    def model(self) -> Any:
        state = self._chat.chat_state
        return None if state is None else state.model

    def get(self) -> dict[int, np.ndarray] | None:
        state = self._chat.chat_state
        return None if state is None else state.steering

    def set(self, steering: Mapping[int, Any] | None) -> None:
        state = self._chat.chat_state
        if state is None:
            raise RuntimeError(
                "steering: the model is still loading; set it once chat.wait_ready() returns."
            )
        state.steering = check_steering(state.model, steering)

    # ---- messages ----

    def handle(self, content: Any, buffers: Any = None) -> bool:
        """Handles a ``steer.`` message; Stop at once, on the kernel's main thread."""
        if isinstance(content, dict) and content.get("kind") == P.STEER_CANCEL:
            self.cancel()
            return True
        return super().handle(content, buffers)

    def jobs(self) -> dict[str, Job]:
        return {
            P.STEER_OPEN: self._info,
            P.STEER_COMPUTE: self._compute,
            P.STEER_ASK: self._ask,
            P.STEER_APPLY: self._apply,  # between two replies, never during one
        }

    def ready(self) -> None:
        if self.model() is None:
            raise NotReady("the model is still loading")

    # ---- jobs (worker thread) ----

    def _info(self, request: P.Request, cancel: threading.Event) -> None:
        layers = int(self.model().backbone.num_layers)
        self.send(
            P.envelope(
                P.STEER_INFO,
                request.id,
                num_layers=layers,
                layer=default_layer(layers) if self.layer is None else self.layer,
                vector=self._vector_summary(),
                applied=sorted(self.get() or {}),
            )
        )

    def _compute(self, request: P.Request, cancel: threading.Event) -> None:
        fields = request.fields
        vector = inspect.steering_vector(
            self.model(), fields["positive"], fields["negative"], layer=fields["layer"]
        )
        if cancel.is_set():  # stopped while it ran: the old vector stays
            self.error(request.id, request.kind, P.ERROR_CANCELLED, "stopped")
            return
        self.vector, self.layer = vector, int(fields["layer"])
        self._counts = (len(fields["positive"]), len(fields["negative"]))
        self.send(P.envelope(P.STEER_VECTOR, request.id, **self._vector_summary()))

    def _ask(self, request: P.Request, cancel: threading.Event) -> None:
        if self.vector is None or self.layer is None:
            raise NotReady("compute a vector first")
        question, strength = request.fields["question"], float(request.fields["strength"])
        if not np.isfinite(strength):
            raise ValueError(f"strength={strength!r}: use a finite number")
        # The chat's own length setting caps the two replies too.
        chat_limit = int(getattr(self._chat, "max_new_tokens", ASK_MAX_NEW_TOKENS))
        limit = int(request.fields["max_new_tokens"] or min(ASK_MAX_NEW_TOKENS, chat_limit))
        if not 1 <= limit <= 1024:
            raise ValueError(f"max_new_tokens={limit}: use 1..1024")
        system = self._chat.system_prompt
        conversation = [*([{"role": "system", "content": system}] if system else [])]
        conversation.append({"role": "user", "content": question})
        steering = {self.layer: (strength * self.vector).astype(np.float32)}
        for which, edits in (("plain", None), ("steered", steering)):
            self._stream_reply(request, which, conversation, edits, limit, cancel)
            if cancel.is_set():  # the view leaves its busy state on this answer
                self.error(request.id, request.kind, P.ERROR_CANCELLED, "stopped")
                return

    def _stream_reply(self, request, which, conversation, steering, limit, cancel) -> None:
        text, last = "", 0.0
        events = stream(
            self.model(),
            conversation,
            max_new_tokens=limit,
            temperature=0.0,  # greedy: the steering is the only difference between the replies
            cancel_event=cancel,
            steering=steering,
        )
        for event in events:
            if isinstance(event, TokenEvent):
                text += event.text
                now = time.monotonic()
                if now - last >= REPLY_INTERVAL_S:
                    last = now
                    self._reply(request.id, which, text, False, None)
            elif isinstance(event, DoneEvent):
                self._reply(request.id, which, event.reply, True, event.stop_reason)

    def _apply(self, request: P.Request, cancel: threading.Event) -> None:
        strength = request.fields["strength"]
        if strength is None:
            self.set(None)
        elif self.vector is None or self.layer is None:
            raise NotReady("compute a vector first")
        else:
            self.set({self.layer: float(strength) * self.vector})
        self._info(request, cancel)  # what is applied now

    # ---- helpers ----

    def _vector_summary(self) -> dict | None:
        if self.vector is None:
            return None
        positive, negative = self._counts
        return {
            "layer": self.layer,
            "norm": float(np.linalg.norm(self.vector)),
            "positive": positive,
            "negative": negative,
        }

    def _reply(self, request_id: str, which: str, text: str, done: bool, reason: Any) -> None:
        self.send(
            P.envelope(
                P.STEER_REPLY, request_id, which=which, text=text, done=done, stop_reason=reason
            )
        )
