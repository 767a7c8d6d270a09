"""`ChatWidget`: a chat panel on a `ChatState`, streaming replies with Stop, settings and transcript.

The front end is ``js/chat_widget`` bundled into ``static/chat.js``. Durable state is in traitlets
(``transcript``, ``status``, ``model_info`` and the sampling settings), so every view of one widget
shows the same conversation; replies stream as ``chat.token`` messages (see `protocol`). Generation
runs on the widget's own worker thread, so the kernel keeps receiving Stop while the model computes.

Example:
    >>> from kerasllm_widget import ChatWidget
    >>> chat = ChatWidget.from_preset("smollm2-135m-instruct")  # doctest: +SKIP
    >>> chat  # doctest: +SKIP
    >>> chat.send("Name three colours.").result()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import anywidget
import traitlets
from ipywidgets import widget_serialization

from kerasllm_widget.generation import settings
from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.training.turns import model_turns
from kerasllm_widget.widgets import protocol as P
from kerasllm_widget.widgets._bundle import bundle
from kerasllm_widget.widgets._worker import GenerationWorker, Task
from kerasllm_widget.widgets.chat_inspectors import chat_inspector_service
from kerasllm_widget.widgets.training_monitor import TrainingMonitor

log = logging.getLogger(__name__)

TRAINING_WAIT_MESSAGE = "Training is running: the reply starts after the current step."

SAMPLING_NAMES = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_new_tokens",
    "seed",
    "top_k_alternatives",
)


class ReplyHandle:
    """What `ChatWidget.send` returns: the reply being made, to wait on from notebook code.

    Example:
        >>> handle = chat.send("Hello!")  # doctest: +SKIP
        >>> handle.result(timeout=60)  # the reply text  # doctest: +SKIP
    """

    def __init__(self, task: Task, request_id: str, widget: ChatWidget) -> None:
        self._task = task
        self.request_id = request_id
        self._widget = widget

    @property
    def done(self) -> bool:
        """True once the reply finished, failed, or was dropped from the queue."""
        return self._task.finished

    @property
    def event(self) -> DoneEvent | None:
        """The `DoneEvent` (stop reason, timings) once the reply finished."""
        result = self._task.result
        return result if isinstance(result, DoneEvent) else None

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the reply ended; False if `timeout` seconds passed first."""
        return self._task.wait(timeout)

    def result(self, timeout: float | None = None) -> str:
        """The reply text. Raises the generation error, or `TimeoutError` if not done in time."""
        if not self._task.wait(timeout):
            raise TimeoutError(f"the reply was not finished after {timeout} s")
        if self._task.exception is not None:
            raise self._task.exception
        if self._task.dropped:
            raise RuntimeError("the message was dropped before it was sent (Stop or Clear)")
        event = self.event
        return "" if event is None else event.text

    def cancel(self) -> None:
        """Stops this reply (or keeps it from starting if still queued)."""
        self._task.cancel()

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<ReplyHandle {self.request_id} {state}>"


class ChatWidget(anywidget.AnyWidget):
    """A chat panel for a Llama model: streaming replies, Stop, settings, transcript and export.

    ``ChatWidget(model_or_chat_state, system_prompt=None, **sampling)`` wraps a loaded
    `Llama3CausalLM` (or an existing `ChatState`); `ChatWidget.from_preset` shows the panel at once
    and loads the model in the background. Sampling settings (``temperature``, ``top_p``,
    ``top_k``, ``min_p``, ``repetition_penalty``, ``max_new_tokens``, ``seed``) are traitlets, in
    step with the settings drawer.

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
            status=_status("loading" if model_or_chat_state is None else "ready"),
            system_prompt=system_prompt or "",
            training=training,
            **sampling,
        )
        self._lock = threading.RLock()
        self._state: Any = None
        self._worker = GenerationWorker()
        self._token_callbacks: list[Callable[[TokenEvent], None]] = []
        self._done_callbacks: list[Callable[[DoneEvent], None]] = []
        # The reply streaming now, as sent so far: what a view opened mid-reply catches up from.
        self._live: dict[str, Any] | None = None
        self._stopped: set[str] = set()  # replies shown as stopped whose engine step still runs
        self._closed = False
        # The inspector tabs (Tokens, Attention, Probabilities) share this comm; see chat_inspectors.
        self._inspectors = chat_inspector_service(self)
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
            message = f"Could not load {preset}: {_describe(exc)}"
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
        info = dict(getattr(state.model, "info", {}) or {})
        self.model_info = info
        self._set_status(
            state="ready",
            message="",
            loading_since=None,
            context_length=int(info.get("context_length") or 0),
            tokens_used=self._context_tokens(),
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
        return ReplyHandle(self._submit_send(request_id, text), request_id, self)

    def regenerate(self) -> ReplyHandle:
        """Generates the last reply again (with the current settings).

        Example:
            >>> chat.temperature = 1.0; chat.regenerate().result(timeout=120)  # doctest: +SKIP
        """
        if not any(e["role"] == "assistant" for e in self.transcript):
            raise ValueError("there is no reply to regenerate")
        request_id = P.new_id()
        return ReplyHandle(self._submit_regenerate(request_id), request_id, self)

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
            self._show_stopped()

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
        with self._lock:
            self._live = None
            self.transcript = []

        def clear(cancel: threading.Event) -> None:
            if self._state is not None:
                self._state.reset()
                self._set_status(tokens_used=self._context_tokens())

        # On the worker, after the reply being stopped: that reply still writes to the ChatState.
        return self._worker.submit(Task(clear, stream=False, name="reset"))

    def on_token(self, callback: Callable[[TokenEvent], None], remove: bool = False) -> None:
        """Calls ``callback(event)`` for every generated token (on the generation thread).

        Example:
            >>> chat.on_token(lambda event: print(event.text, end=""))  # doctest: +SKIP
        """
        _register(self._token_callbacks, callback, remove)

    def on_done(self, callback: Callable[[DoneEvent], None], remove: bool = False) -> None:
        """Calls ``callback(done_event)`` when a reply ends (on the generation thread).

        Example:
            >>> chat.on_done(lambda done: print(done.stop_reason, done.decode_tokens_per_s))  # doctest: +SKIP
        """
        _register(self._done_callbacks, callback, remove)

    def close(self) -> None:
        """Stops generation and the worker thread, and closes the widget's views."""
        if not getattr(self, "_closed", True):
            self._closed = True
            self._worker.close(timeout=2.0)
            self._inspectors.close()
        super().close()

    # ---- requests ----

    def _submit_send(self, request_id: str, text: str) -> Task:
        user_id, reply_id = P.new_id("u"), P.new_id("a")
        with self._lock:
            queued = self._worker.busy
            self.transcript = [
                *self.transcript,
                _entry(user_id, "user", text, "queued" if queued else "sent", request_id),
            ]

        def prepare(cancel: threading.Event) -> Iterator[Any]:
            self._mark_started(user_id, reply_id, request_id)
            return self._state.stream(text, **self._sampling(cancel))

        return self._submit_stream(request_id, reply_id, prepare, user_id=user_id)

    def _submit_regenerate(self, request_id: str) -> Task:
        reply_id = P.new_id("a")

        def prepare(cancel: threading.Event) -> Iterator[Any]:
            # The last user turn is asked again. Done as "rewind to before it and send it", not
            # with ChatState.regenerate, so that a turn whose reply failed (which ChatState took
            # back) is retried too, rather than the turn before it.
            with self._lock:
                entries = list(self.transcript)
                index = _last_index(entries, "user")
                if index is None:
                    raise ValueError("there is no message to answer again")
                user = {**entries[index], "status": "sent"}
                self._rewind_state(entries[:index])
                self.transcript = [
                    *entries[:index],
                    user,
                    _entry(reply_id, "assistant", "", "streaming", request_id),
                ]
            self._begin_live(reply_id, request_id)
            return self._state.stream(user["content"], **self._sampling(cancel))

        return self._submit_stream(request_id, reply_id, prepare)

    def _submit_edit(self, request_id: str, message_id: str, text: str) -> Task:
        user_id, reply_id = P.new_id("u"), P.new_id("a")

        def prepare(cancel: threading.Event) -> Iterator[Any]:
            with self._lock:
                entries = list(self.transcript)
                index = next((i for i, e in enumerate(entries) if e["id"] == message_id), None)
                if index is None:
                    raise ValueError("the message to edit is no longer in the conversation")
                self._rewind_state(entries[:index])
                self.transcript = [
                    *entries[:index],
                    _entry(user_id, "user", text, "sent", request_id),
                    _entry(reply_id, "assistant", "", "streaming", request_id),
                ]
            self._begin_live(reply_id, request_id)
            return self._state.stream(text, **self._sampling(cancel))

        return self._submit_stream(request_id, reply_id, prepare)

    def _submit_stream(
        self,
        request_id: str,
        reply_id: str,
        prepare: Callable[[threading.Event], Iterator[Any]],
        user_id: str | None = None,
    ) -> Task:
        # The reply's turn on the model (see `_in_turn`) is given back only once the task reads
        # as finished, its transcript and callbacks done: training resumes after all of it.
        turn = contextlib.ExitStack()

        def run(cancel: threading.Event) -> Iterator[Any]:
            if self._state is None:
                raise RuntimeError(self.status.get("message") or "the model is not loaded")
            return self._observe(self._in_turn(prepare, cancel, turn))

        def on_start(task: Task) -> None:
            if self._state is not None:  # without a model the status keeps saying why
                self._set_status(state="generating", queued=len(self._worker.pending))

        def on_tokens(task: Task, batch: list[TokenEvent]) -> None:
            self._send_tokens(request_id, reply_id, batch)

        def on_done(task: Task, done: DoneEvent) -> None:
            self._finish(request_id, reply_id, done)

        def on_error(task: Task, exc: BaseException) -> None:
            self._fail(request_id, reply_id, user_id, exc)

        def on_dropped(task: Task) -> None:
            if user_id is not None:
                self._remove_entries({user_id})
            self._set_status(queued=len(self._worker.pending))

        task = Task(
            run,
            on_start=on_start,
            on_tokens=on_tokens,
            on_done=on_done,
            on_error=on_error,
            on_dropped=on_dropped,
            after=lambda task: turn.close(),
            name=request_id,
        )
        self._worker.submit(task)
        if self._worker.current is not task:
            self._set_status(queued=len(self._worker.pending))
        return task

    def _in_turn(
        self,
        prepare: Callable[[threading.Event], Iterator[Any]],
        cancel: threading.Event,
        turn: contextlib.ExitStack,
    ) -> Iterator[Any]:
        """The reply's stream, made while no training step changes the weights (see
        `kerasllm_widget.training.turns`): during ``fit`` it waits for the end of a step. The
        turn is held in ``turn``, which the task closes when it has finished."""
        events = prepare(cancel)  # shows the reply as started; computes nothing yet

        def waiting() -> None:
            self._set_status(message=TRAINING_WAIT_MESSAGE)

        granted = turn.enter_context(model_turns(self._state.model).reply(cancel, on_wait=waiting))
        if self.status.get("message") == TRAINING_WAIT_MESSAGE:
            self._set_status(message="")
        if not granted:  # stopped while waiting: nothing was computed
            events.close()
            yield DoneEvent("cancelled", "", [], 0, 0, 0.0, 0.0, 0.0)
            return
        yield from events

    def _sampling(self, cancel: threading.Event) -> dict[str, Any]:
        settings: dict[str, Any] = {name: getattr(self, name) for name in SAMPLING_NAMES}
        settings["cancel_event"] = cancel
        # The system prompt is applied when a reply starts, on this thread, so that a change made
        # while a reply streams takes effect from the next one.
        self._state.system_prompt = self.system_prompt or None
        return settings

    def _observe(self, events: Iterator[Any]) -> Iterator[Any]:
        """Passes the stream through, calling the notebook's on_token/on_done callbacks."""
        for event in events:
            if isinstance(event, TokenEvent):
                for callback in list(self._token_callbacks):
                    _safe_call(callback, event)
            elif isinstance(event, DoneEvent):
                for callback in list(self._done_callbacks):
                    _safe_call(callback, event)
            yield event

    # ---- the stream, on the worker thread ----

    def _mark_started(self, user_id: str, reply_id: str, request_id: str) -> None:
        with self._lock:
            entries = [
                {**e, "status": "sent"} if e["id"] == user_id else e for e in self.transcript
            ]
            entries.append(_entry(reply_id, "assistant", "", "streaming", request_id))
            self.transcript = entries
        self._begin_live(reply_id, request_id)

    def _begin_live(self, reply_id: str, request_id: str) -> None:
        with self._lock:
            self._live = {"reply_id": reply_id, "request_id": request_id, "text": "", "tokens": []}

    def _send_tokens(self, request_id: str, reply_id: str, batch: list[TokenEvent]) -> None:
        records = [P.token_record(event) for event in batch]
        with self._lock:
            if reply_id in self._stopped:  # shown as stopped: nothing more streams into it
                return
            live = self._live
            if live is not None and live["reply_id"] == reply_id:
                live["tokens"].extend(records)
                live["text"] += "".join(r["text"] for r in records)
            self._emit(P.envelope(P.CHAT_TOKEN, request_id, reply_id=reply_id, tokens=records))

    def _show_stopped(self) -> None:
        with self._lock:
            live, self._live = self._live, None
            if live is None:
                return
            self._stopped.add(live["reply_id"])
            with self._one_update():
                self._update_entry(
                    live["reply_id"],
                    content=live["text"],
                    status="cancelled",
                    stop_reason="cancelled",
                )
                self._set_status(state=self._state_between_replies(), queued=0)

    def _finish(self, request_id: str, reply_id: str, done: DoneEvent) -> None:
        stats = P.reply_stats(done)
        status = "cancelled" if done.stop_reason == "cancelled" else "done"
        tokens_used = self._context_tokens()
        with self._one_update():
            self._live = None
            self._stopped.discard(reply_id)
            self._update_entry(
                reply_id,
                content=done.text,
                status=status,
                stop_reason=done.stop_reason,
                notice=done.notice or "",
                stats=stats,
            )
            self._set_status(
                state=self._state_between_replies(),
                queued=len(self._worker.pending),
                tokens_used=tokens_used,
                time_to_first_token_s=stats["time_to_first_token_s"],
                decode_tokens_per_s=stats["decode_tokens_per_s"],
            )
            self._emit(
                P.envelope(
                    P.CHAT_DONE,
                    request_id,
                    reply_id=reply_id,
                    stop_reason=done.stop_reason,
                    text=done.text,
                    notice=done.notice or "",
                    stats=stats,
                )
            )

    def _fail(
        self, request_id: str, reply_id: str, user_id: str | None, exc: BaseException
    ) -> None:
        message = _describe(exc)
        log.error("generation failed: %s", "".join(traceback.format_exception(exc)))
        tokens_used = self._context_tokens()
        with self._one_update():
            live, self._live = self._live, None
            entries = list(self.transcript)
            shown = next((e["content"] for e in entries if e["id"] == reply_id), "")
            partial = live["text"] if live and live["reply_id"] == reply_id else shown
            self._stopped.discard(reply_id)
            if user_id is not None:
                entries = [{**e, "status": "sent"} if e["id"] == user_id else e for e in entries]
            if not any(e["id"] == reply_id for e in entries):
                # Failed before the reply started (e.g. the model never loaded).
                entries.append(_entry(reply_id, "assistant", "", "error", request_id))
            self.transcript = entries
            self._update_entry(
                reply_id, content=partial, status="error", stop_reason="error", error=message
            )
            self._set_status(
                state=self._state_between_replies(),
                queued=len(self._worker.pending),
                tokens_used=tokens_used,
            )
        self._broadcast_error(request_id, reply_id, P.ERROR_GENERATION, message)

    def _rewind_state(self, kept: list[dict[str, Any]]) -> None:
        """Makes the ChatState's turns those of the transcript entries `kept`.

        Mirrors what ChatState itself records: a user turn stays when its reply finished or was
        stopped (a failed reply takes its user turn back); an empty stopped reply is not a turn.
        """
        messages: list[dict[str, str]] = []
        for i, entry in enumerate(kept):
            if entry["role"] != "user":
                continue
            reply = kept[i + 1] if i + 1 < len(kept) else None
            if reply is None or reply["role"] != "assistant":
                continue
            if reply["status"] not in ("done", "cancelled"):
                continue
            messages.append({"role": "user", "content": entry["content"]})
            if reply["content"]:
                messages.append({"role": "assistant", "content": reply["content"]})
        self._state.messages[:] = messages

    # ---- messages from the front end (kernel main thread) ----

    def _on_custom_message(self, widget: Any, content: Any, buffers: list[Any]) -> None:
        if self._inspectors.handle(content, buffers):  # an inspector tab's request
            return
        try:
            request = P.parse_request(content)
        except P.ProtocolError as exc:
            request_id = content.get("id") if isinstance(content, dict) else None
            self._broadcast_error(str(request_id or ""), None, P.ERROR_BAD_REQUEST, str(exc))
            return
        handler = {
            P.CHAT_SEND: self._handle_send,
            P.CHAT_REGENERATE: self._handle_regenerate,
            P.CHAT_EDIT: self._handle_edit,
            P.CHAT_CANCEL: lambda r: self.stop(),
            P.CHAT_CLEAR: lambda r: self._clear(),
            P.CHAT_SYNC: self._handle_sync,
        }[request.kind]
        try:
            handler(request)
        except Exception as exc:  # answered, never raised into the void
            log.exception("handling %s failed", request.kind)
            self._broadcast_error(request.id, None, P.ERROR_BAD_REQUEST, _describe(exc))

    def _handle_send(self, request: P.Request) -> None:
        text = request.fields["text"]
        if not text.strip():
            self._broadcast_error(request.id, None, P.ERROR_BAD_REQUEST, "The message is empty.")
            return
        if self.status.get("state") == "error" and self._state is None:
            self._broadcast_error(
                request.id, None, P.ERROR_NOT_READY, self.status.get("message") or "No model."
            )
            return
        self._submit_send(request.id, text)

    def _handle_regenerate(self, request: P.Request) -> None:
        if not any(e["role"] == "assistant" for e in self.transcript):
            self._broadcast_error(
                request.id, None, P.ERROR_NOTHING_TO_DO, "There is no reply to regenerate."
            )
            return
        self._submit_regenerate(request.id)

    def _handle_edit(self, request: P.Request) -> None:
        message_id, text = request.fields["message_id"], request.fields["text"]
        entry = next((e for e in self.transcript if e["id"] == message_id), None)
        if entry is None or entry["role"] != "user":
            self._broadcast_error(
                request.id, None, P.ERROR_BAD_REQUEST, "That message cannot be edited."
            )
            return
        if not text.strip():
            self._broadcast_error(request.id, None, P.ERROR_BAD_REQUEST, "The message is empty.")
            return
        self._submit_edit(request.id, message_id, text)

    def _handle_sync(self, request: P.Request) -> None:
        with self._lock:
            live = self._live
            snapshot = P.envelope(
                P.CHAT_SNAPSHOT,
                request.id,
                reply_id=live["reply_id"] if live else None,
                text=live["text"] if live else "",
                count=len(live["tokens"]) if live else 0,
                tokens=list(live["tokens"]) if live else [],
            )
            self._emit(snapshot)

    # ---- helpers ----

    def _emit(self, message: dict[str, Any]) -> None:
        if self.comm is None:  # closed: nobody to tell
            return
        super().send(message)

    def _broadcast_error(self, request_id: str, reply_id: str | None, code: str, message: str):
        self._emit(
            P.envelope(P.CHAT_ERROR, request_id, reply_id=reply_id, code=code, message=message)
        )

    @contextlib.contextmanager
    def _one_update(self) -> Iterator[None]:
        """Sends every trait changed inside as one state message, so no view ever draws a
        finished reply next to a status that still says it is generating."""
        with self._lock, self.hold_sync():
            yield

    def _set_status(self, **changes: Any) -> None:
        with self._lock:
            self.status = {**_status("ready"), **self.status, **changes}

    def _update_entry(self, entry_id: str, **changes: Any) -> None:
        with self._lock:
            self.transcript = [
                {**e, **changes} if e["id"] == entry_id else e for e in self.transcript
            ]

    def _remove_entries(self, ids: set[str]) -> None:
        with self._lock:
            self.transcript = [e for e in self.transcript if e["id"] not in ids]

    def _state_between_replies(self) -> str:
        if self._state is None:  # still loading, or failed to load: that is what the user sees
            return str(self.status.get("state", "loading"))
        return "generating" if self._worker.pending else "ready"

    def _context_tokens(self) -> int:
        try:
            return int(self._state.context_tokens()) if self._state is not None else 0
        except Exception:  # the count is informative; never let it break a reply
            log.exception("counting context tokens failed")
            return 0

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


def _entry(entry_id: str, role: str, content: str, status: str, request_id: str) -> dict[str, Any]:
    return {
        "id": entry_id,
        "role": role,
        "content": content,
        "status": status,
        "request_id": request_id,
    }


def _last_index(entries: list[dict[str, Any]], role: str) -> int | None:
    for index in range(len(entries) - 1, -1, -1):
        if entries[index]["role"] == role:
            return index
    return None


def _status(state: str) -> dict[str, Any]:
    return {
        "state": state,
        "message": "",
        "tokens_used": 0,
        "context_length": 0,
        "queued": 0,
        "time_to_first_token_s": None,
        "decode_tokens_per_s": None,
        "loading_since": None,
    }


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _register(callbacks: list[Any], callback: Callable[..., None], remove: bool) -> None:
    if remove:
        if callback in callbacks:
            callbacks.remove(callback)
    elif callback not in callbacks:
        callbacks.append(callback)


def _safe_call(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:  # a notebook callback's bug must not end the reply
        log.exception("a ChatWidget callback failed")
