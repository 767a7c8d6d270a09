"""`ChatWidget`: a chat panel on a `ChatState`, streaming replies with Stop, settings and transcript.

The front end is ``js/chat_widget`` bundled into ``static/chat.js``. Durable state is in traitlets
(``transcript``, ``status``, ``model_info`` and the sampling settings), so every view of one widget
shows the same conversation; replies stream as ``chat.token`` messages (see `protocol`). Generation
runs on the widget's own worker thread, so the kernel keeps receiving Stop while the model computes.
Replies are made by `ChatReplies` (``chat_replies``) and shown by `ChatTranscript`
(``chat_transcript``), which makes and changes the transcript's entries; the front end's requests
are answered by `ChatMessages` (``chat_messages``); the conversation the
model reads is the `ChatState`'s, changed only through its own methods.

Example:
    >>> from kerasllm_widget import ChatWidget
    >>> chat = ChatWidget.from_preset("smollm2-135m-instruct")  # doctest: +SKIP
    >>> chat  # doctest: +SKIP
    >>> chat.send("Name three colours.").result()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import anywidget
import traitlets
from ipywidgets import widget_serialization

from kerasllm_widget.generation import settings
from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.kernels.products import off_notice
from kerasllm_widget.widgets import protocol as P
from kerasllm_widget.widgets._bundle import bundle
from kerasllm_widget.widgets._chat_source import ChatSource
from kerasllm_widget.widgets._worker import GenerationWorker, Task
from kerasllm_widget.widgets.chat_inspectors import chat_inspector_service
from kerasllm_widget.widgets.chat_messages import ChatMessages
from kerasllm_widget.widgets.chat_replies import (
    SAMPLING_NAMES,
    TRAINING_WAIT_MESSAGE,
    ChatReplies,
    describe,
)
from kerasllm_widget.widgets.chat_transcript import ChatTranscript, initial_status, last_index
from kerasllm_widget.widgets.compare_panel import ComparePanel, resolve_model
from kerasllm_widget.widgets.kv_cache_service import KvCacheService
from kerasllm_widget.widgets.reply_handle import ReplyHandle
from kerasllm_widget.widgets.steering_panel import SteeringPanel
from kerasllm_widget.widgets.training_monitor import TrainingMonitor

__all__ = ["SAMPLING_NAMES", "TRAINING_WAIT_MESSAGE", "ChatWidget", "ReplyHandle"]

log = logging.getLogger(__name__)


class ChatWidget(ChatMessages, anywidget.AnyWidget):
    """A chat panel for a Llama model: streaming replies, Stop, settings, transcript and export.

    ``ChatWidget(model_or_chat_state, system_prompt=None, **sampling)`` wraps a loaded
    `Llama3CausalLM` (or an existing `ChatState`); `ChatWidget.from_preset` shows the panel at once
    and loads the model in the background. Sampling settings (``temperature``, ``top_p``,
    ``top_k``, ``min_p``, ``repetition_penalty``, ``max_new_tokens``, ``seed``) are traitlets, in
    step with the settings drawer; those not passed start from the checkpoint's
    ``generation_config.json`` (e.g. Llama 3.2 Instruct: temperature 0.6, top_p 0.9).

    Example:
        >>> chat = ChatWidget(model, system_prompt="Answer briefly.", temperature=0.2)  # doctest: +SKIP
        >>> reply = chat.send("What is a tokenizer?")  # doctest: +SKIP
        >>> chat.history  # doctest: +SKIP
    """

    _esm = bundle("chat")
    _css = bundle("chat", "css")

    transcript = traitlets.List(traitlets.Dict()).tag(sync=True)
    status = traitlets.Dict().tag(sync=True)
    model_info = traitlets.Dict().tag(sync=True)

    system_prompt = traitlets.Unicode("").tag(sync=True)
    temperature = traitlets.Float(0.7).tag(sync=True)
    top_p = traitlets.Float(0.9).tag(sync=True)
    top_k = traitlets.Int(50).tag(sync=True)
    min_p = traitlets.Float(0.0).tag(sync=True)
    repetition_penalty = traitlets.Float(1.0).tag(sync=True)
    max_new_tokens = traitlets.Int(512).tag(sync=True)
    seed = traitlets.Int(None, allow_none=True).tag(sync=True)
    # Alternatives recorded per generated token (the Probabilities tab asks for them).
    top_k_alternatives = traitlets.Int(0).tag(sync=True)
    # The TrainingMonitor drawn in the Training tab (the tab shows once one is set).
    training = traitlets.Instance(TrainingMonitor, allow_none=True).tag(
        sync=True, **widget_serialization
    )
    # The names of the two models of the Compare tab ({"a", "b"}; the tab shows once set).
    compare = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        model_or_chat_state: Any = None,
        system_prompt: str | None = None,
        training: TrainingMonitor | None = None,
        **sampling: Any,
    ) -> None:
        unknown = set(sampling) - set(SAMPLING_NAMES)
        if unknown:
            raise TypeError(
                f"unknown setting(s) {sorted(unknown)}; settings are {', '.join(SAMPLING_NAMES)}"
            )
        super().__init__(
            status=initial_status("loading" if model_or_chat_state is None else "ready"),
            system_prompt=system_prompt or "",
            training=training,
            **sampling,
        )
        self._lock = threading.RLock()
        self._state: Any = None
        self._chosen_settings = set(sampling)  # the checkpoint's defaults never override these
        self._worker = GenerationWorker()
        self._transcript = ChatTranscript(self, self._lock)
        self._replies = ChatReplies(self, self._worker, self._transcript, self._emit)
        self._closed = False
        # The inspector tabs (Tokens, Attention, Probabilities) share this comm; see chat_inspectors.
        self._inspectors = chat_inspector_service(self)
        self._cache_view = KvCacheService(self)  # the Cache tab
        # The Steering and Compare tabs run on the chat's worker, behind its replies.
        self._steering = SteeringPanel(self, self._worker)
        source = ChatSource(chat=self)
        self._compare = ComparePanel(
            self, self._worker, model_a=source.model, sequence=lambda: source.sequence(None)
        )
        self.on_msg(self._on_custom_message)
        if model_or_chat_state is not None:
            self._attach(model_or_chat_state)

    # ---- construction ----

    @classmethod
    def from_preset(cls, preset: str, dtype: str | None = None, **kwargs: Any) -> ChatWidget:
        """Shows the panel at once and loads ``Llama3CausalLM.from_preset(preset, dtype)`` behind it.

        Messages sent while the model loads wait for it. ``kwargs`` are those of `ChatWidget`
        (``system_prompt`` and sampling settings). `wait_ready` blocks until the model is loaded.

        Example:
            >>> chat = ChatWidget.from_preset("smollm2-135m-instruct", temperature=0.2)  # doctest: +SKIP
        """
        widget = cls(None, **kwargs)
        widget.model_info = {"name": str(preset)}
        widget._set_status(state="loading", message=f"Loading {preset}", loading_since=time.time())

        def load(cancel: threading.Event) -> Any:
            from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

            return Llama3CausalLM.from_preset(preset, dtype=dtype)

        def loaded(task: Task, model: Any) -> None:
            widget._attach(model)

        def failed(task: Task, exc: BaseException) -> None:
            message = f"Could not load {preset}: {describe(exc)}"
            widget._set_status(state="error", message=message, loading_since=None)
            widget._broadcast_error(P.new_id(), None, P.ERROR_LOAD, message)

        widget._worker.submit(
            Task(load, stream=False, on_done=loaded, on_error=failed, name="load")
        )
        return widget

    def _attach(self, target: Any) -> None:
        if hasattr(target, "stream") and hasattr(target, "messages"):
            state = target
        else:
            from kerasllm_widget.chat.chat_state import ChatState

            # What a user types in the panel is text: "<|im_start|>system" in a message must
            # not open a system turn.
            state = ChatState(
                target, system_prompt=self.system_prompt or None, escape_special_tokens=True
            )
        if not self.system_prompt and getattr(state, "system_prompt", None):
            self.system_prompt = state.system_prompt
        self._state = state
        # The checkpoint's generation_config.json sampling defaults start the settings drawer,
        # as transformers' generate starts from them.
        config = getattr(state.model, "generation_config", None)
        for name, value in settings.sampling_defaults(config).items():
            if name not in self._chosen_settings:
                setattr(self, name, value)
        info = dict(getattr(state.model, "info", {}) or {})
        self.model_info = info
        self._set_status(
            state="ready",
            message="",
            loading_since=None,
            context_length=int(info.get("context_length") or 0),
            tokens_used=self._replies.context_tokens(),
            # Why decoding runs slower than it could here (no native kernel), and what to install.
            notice=off_notice(),
        )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Blocks until the model is loaded (True), it failed to load, or `timeout` passed (False).

        Example:
            >>> ChatWidget.from_preset("smollm2-135m-instruct").wait_ready(300)  # doctest: +SKIP
            True
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status.get("state") == "loading":
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return self._state is not None

    # ---- Python API ----

    def training_monitor(self, sample_prompt: Any = None, **kwargs: Any) -> TrainingMonitor:
        """A `TrainingMonitor` shown as this panel's Training tab: pass it to ``fit``.

        The chat talks to the model being trained. A message sent while ``fit`` runs (on a
        thread, so that the kernel stays free) waits for the end of the current training step,
        is answered with the weights trained so far, and training goes on after the reply; the
        status line says that the reply waits. Without a monitor in ``fit``'s callbacks, replies
        wait until ``fit`` returns. ``kwargs`` are `TrainingMonitor`'s.

        Example:
            >>> chat = ChatWidget(model); chat  # doctest: +SKIP
            >>> monitor = chat.training_monitor(sample_prompt="Who are you?")  # doctest: +SKIP
            >>> model.fit(conversations, epochs=3, callbacks=[monitor])  # doctest: +SKIP
        """
        monitor = TrainingMonitor(sample_prompt=sample_prompt, **kwargs)
        self.training = monitor
        return monitor

    @property
    def steering(self) -> dict | None:
        """``{layer: vector}`` added to the residual after that decoder layer in every reply
        from now on (None: off); checked when set (layer in range, vector ``[hidden]``, finite).

        Example:
            >>> v = inspect.steering_vector(model, ["I love it"], ["I hate it"], layer=10)  # doctest: +SKIP
            >>> chat.steering = {10: 4.0 * v}  # doctest: +SKIP
        """
        return self._steering.get()

    @steering.setter
    def steering(self, value: dict | None) -> None:
        self._steering.set(value)

    def compare_with(self, other: Any) -> None:
        """Adds a Compare tab: the conversation scored under this model and ``other`` (a
        `Llama3CausalLM`, a preset name or a ChatWidget) token by token.

        Example:
            >>> chat.compare_with("smollm2-135m-instruct")  # doctest: +SKIP
        """
        self.compare = self._compare.set_model_b(resolve_model(other))

    @property
    def chat_state(self) -> Any:
        """The `ChatState` behind the panel (None while the model loads)."""
        return self._state

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation as the model sees it: ``[{"role", "content"}, ...]``.

        Example:
            >>> chat.history  # doctest: +SKIP
            [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
        """
        if self._state is None:
            return []
        return [{"role": m["role"], "content": m["content"]} for m in self._state.messages]

    def send(self, text: str, buffers: Any = None) -> ReplyHandle:  # type: ignore[override]
        """Sends a user message and returns at once; the reply streams into the panel.

        If a reply is being generated, the message waits in a queue (shown in the panel).
        (``ipywidgets.Widget.send(content, buffers)`` sends a custom message; a dict passed here
        is still sent that way, so anywidget's own machinery keeps working.)

        Example:
            >>> chat.send("Write a haiku about tokens.").result(timeout=120)  # doctest: +SKIP
        """
        if isinstance(text, dict):
            return super().send(text, buffers)
        if not isinstance(text, str) or not text.strip():
            raise ValueError("send() needs a non-empty message")
        request_id = P.new_id()
        return ReplyHandle(self._replies.send(request_id, text), request_id, self)

    def regenerate(self) -> ReplyHandle:
        """Generates the last reply again (with the current settings).

        Example:
            >>> chat.temperature = 1.0; chat.regenerate().result(timeout=120)  # doctest: +SKIP
        """
        if last_index(self.transcript, "assistant") is None:
            raise ValueError("there is no reply to regenerate")
        request_id = P.new_id()
        return ReplyHandle(self._replies.regenerate(request_id), request_id, self)

    def branch(
        self,
        message_id: str,
        token_index: int,
        token_id: int | None = None,
        text: str | None = None,
    ) -> ReplyHandle:
        """Continues the reply ``message_id`` (a transcript entry's id) from its first
        ``token_index`` tokens and ``token_id`` or the typed ``text`` (neither: the model
        picks). The branch streams in place of the reply, which stays one of its siblings
        (``‹ 1 / 2 ›`` in the panel, `switch`). See `ChatState.branch`.

        Example:
            >>> reply = chat.transcript[-1]["id"]  # doctest: +SKIP
            >>> chat.branch(reply, 3, text=" Actually").result(timeout=120)  # doctest: +SKIP
        """
        request_id = P.new_id()
        return ReplyHandle(
            self._branch(request_id, message_id, token_index, token_id, text), request_id, self
        )

    def _branch(self, request_id, message_id, token_index, token_id=None, text=None) -> Task:
        if self._state is None:
            raise ValueError("the model is not loaded yet: there is nothing to branch")
        with self._transcript.lock:
            _, state_id = self._replies.branch_point(message_id)
        # Checked now, so that a wrong index or token is answered at once (ChatState's checks).
        self._state.branch_prefix(state_id, token_index, token_id, text=text)
        return self._replies.branch(request_id, message_id, token_index, token_id, text)

    def switch(self, message_id: str, index: int, timeout: float | None = 30.0) -> None:
        """Shows sibling ``index`` (from 0) of the message ``message_id`` (a transcript entry's
        id with ``siblings``), followed by that sibling's own continuation. After the reply
        being made, if any: waits (at most ``timeout`` seconds) until the transcript shows it.

        Example:
            >>> chat.switch(chat.transcript[-1]["id"], 0)  # doctest: +SKIP
        """
        self._switch(message_id, index).wait(timeout)

    def _switch(self, message_id: str, index: int) -> Task:
        found = self._transcript.find(message_id)
        count = (found or {}).get("siblings", [0, 1])[1]
        if found is None or not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(
                f"message_id={message_id!r}, index={index!r}: "
                + (f"use an index from 0 to {count - 1}." if found else "no such message.")
            )
        return self._replies.switch(message_id, index)

    def stop(self) -> None:
        """Stops the reply being generated and drops messages waiting in the queue.

        The panel shows the reply as stopped at once, with the text it had: the engine stops at
        its next decode step and keeps nothing it computes after the Stop, but that step (a few
        tokens on a slow CPU) can take a second, and the user should not have to watch it.
        `ReplyHandle.wait` still waits for the real end.

        Example:
            >>> handle = chat.send("Tell me a long story."); chat.stop()  # doctest: +SKIP
        """
        self._worker.drop_pending()
        if self._worker.cancel_current() is not None:
            self._replies.show_stopped()

    def reset(self, timeout: float | None = 30.0) -> None:
        """Starts a new conversation (keeps the model, system prompt and settings).

        Waits (at most `timeout` seconds) for a reply being stopped to end, so that `history` is
        empty when this returns.

        Example:
            >>> chat.reset(); chat.history  # doctest: +SKIP
            []
        """
        self._clear().wait(timeout)

    def _clear(self) -> Task:
        self.stop()
        self._transcript.clear()

        def clear(cancel: threading.Event) -> None:
            if self._state is not None:
                self._state.reset()
                self._set_status(tokens_used=self._replies.context_tokens())

        # On the worker, after the reply being stopped: that reply still writes to the ChatState.
        return self._worker.submit(Task(clear, stream=False, name="reset"))

    def on_token(self, callback: Callable[[TokenEvent], None], remove: bool = False) -> None:
        """Calls ``callback(event)`` for every generated token (on the generation thread).

        Example:
            >>> chat.on_token(lambda event: print(event.text, end=""))  # doctest: +SKIP
        """
        _register(self._replies.token_callbacks, callback, remove)

    def on_done(self, callback: Callable[[DoneEvent], None], remove: bool = False) -> None:
        """Calls ``callback(done_event)`` when a reply ends (on the generation thread).

        Example:
            >>> chat.on_done(lambda done: print(done.stop_reason, done.decode_tokens_per_s))  # doctest: +SKIP
        """
        _register(self._replies.done_callbacks, callback, remove)

    def close(self) -> None:
        """Stops generation and the worker thread, and closes the widget's views."""
        if not getattr(self, "_closed", True):
            self._closed = True
            self._worker.close(timeout=2.0)
            self._inspectors.close()
            self._cache_view.close()
        super().close()

    # ---- helpers ----

    def _set_status(self, **changes: Any) -> None:
        self._transcript.set_status(**changes)

    # The same checks as `generate`, `stream` and ChatState (`generation.settings`), so a value
    # that would fail or run away at the next reply is refused when it is set.
    _CHECKS: ClassVar[dict[str, Callable[[Any, str], Any]]] = {
        "temperature": settings.check_temperature,
        "top_p": lambda value, name: settings.check_probability(value, name),
        "min_p": lambda value, name: settings.check_probability(value, name, open_below=False),
        "repetition_penalty": settings.check_positive,
        "top_k": settings.check_top_k,
        "max_new_tokens": settings.check_max_new_tokens,
        "top_k_alternatives": lambda value, name: settings.check_count(value, name, 0, 1024),
        "seed": settings.check_seed,
    }

    @traitlets.validate(*_CHECKS)
    def _validate_setting(self, proposal: Any) -> Any:
        name = proposal["trait"].name
        try:
            return self._CHECKS[name](proposal["value"], name)
        except settings.GenerationSettingError as error:
            raise traitlets.TraitError(str(error)) from None


def _register(callbacks: list[Any], callback: Callable[..., None], remove: bool) -> None:
    if remove:
        if callback in callbacks:
            callbacks.remove(callback)
    elif callback not in callbacks:
        callbacks.append(callback)
