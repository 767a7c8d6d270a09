"""`ChatReplies`: a `ChatWidget`'s replies, made on its worker thread by its `ChatState`.

A send, a regenerate or an edit becomes one `Task` on the widget's worker thread. When the task
starts, the transcript shows the reply (`ChatTranscript`) and ChatState is asked for it, through
its own methods only: `ChatState.stream` for a new turn, `ChatState.regenerate` for the last
turn answered again, `ChatState.edit` for a turn asked again from a point of the conversation,
`ChatState.branch` for a reply continued from one of its tokens, `ChatState.switch` to show
another sibling. Tokens stream to the views as ``chat.token`` batches; the end,
a failure or a Stop updates the transcript and the status line in one state message.

Example:
    >>> replies = ChatReplies(widget, worker, transcript, emit)  # doctest: +SKIP
    >>> replies.send("v1-1", "Hello!").wait(60)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.training.turns import model_turns
from kerasllm_widget.widgets import protocol as P
from kerasllm_widget.widgets._worker import GenerationWorker, Task
from kerasllm_widget.widgets.branch_tokens import prefix_records
from kerasllm_widget.widgets.chat_transcript import ChatTranscript, entry, last_index

log = logging.getLogger(__name__)

TRAINING_WAIT_MESSAGE = "Training is running: the reply starts after the current step."

# The widget's sampling traits, as ChatState's stream takes them.
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


class ChatReplies:
    """The replies of one `ChatWidget`.

    Args:
        widget: the widget: its ``chat_state``, sampling traits, ``system_prompt`` and ``status``.
        worker: the widget's worker thread, where every reply runs, one at a time.
        transcript: the widget's transcript, where replies show.
        emit: sends one custom message to the widget's views.
    """

    def __init__(
        self,
        widget: Any,
        worker: GenerationWorker,
        transcript: ChatTranscript,
        emit: Callable[[dict[str, Any]], None],
    ) -> None:
        self._widget = widget
        self._worker = worker
        self._transcript = transcript
        self._emit = emit
        # The notebook's `ChatWidget.on_token` and `on_done` callbacks.
        self.token_callbacks: list[Callable[[TokenEvent], None]] = []
        self.done_callbacks: list[Callable[[DoneEvent], None]] = []

    # ---- requests ----

    def send(self, request_id: str, text: str) -> Task:
        """Queues a reply to a new user message ``text``."""
        user_id, reply_id = P.new_id("u"), P.new_id("a")
        self._transcript.add_user(user_id, text, request_id, queued=self._worker.busy)

        def prepare(state: Any, cancel: threading.Event) -> Iterator[Any]:
            self._transcript.start_reply(user_id, reply_id, request_id)
            return state.stream(text, **self._sampling(state, cancel))

        return self._submit(request_id, reply_id, prepare, user_id=user_id)

    def regenerate(self, request_id: str) -> Task:
        """Queues a new reply to the last user message."""
        reply_id = P.new_id("a")

        def prepare(state: Any, cancel: threading.Event) -> Iterator[Any]:
            # The last user turn is asked again from where it is in ChatState: so a turn whose
            # reply failed (which ChatState never took) is retried too, rather than the one
            # before it, as ChatState.regenerate would.
            with self._transcript.lock:
                entries = self._transcript.entries
                index = last_index(entries, "user")
                if index is None:
                    raise ValueError("there is no message to answer again")
                user = entries[index]
                start = self._transcript.rewind(
                    index, user, reply_id, request_id, len(state.messages)
                )
            return self._answer_at(state, start, user["content"], cancel)

        return self._submit(request_id, reply_id, prepare)

    def edit(self, request_id: str, message_id: str, text: str) -> Task:
        """Queues the replacement of user message ``message_id`` (and all after it) by ``text``,
        and a reply to it."""
        user_id, reply_id = P.new_id("u"), P.new_id("a")

        def prepare(state: Any, cancel: threading.Event) -> Iterator[Any]:
            with self._transcript.lock:
                entries = self._transcript.entries
                index = next((i for i, e in enumerate(entries) if e["id"] == message_id), None)
                if index is None:
                    raise ValueError("the message to edit is no longer in the conversation")
                user = entry(user_id, "user", text, "sent", request_id)
                start = self._transcript.rewind(
                    index, user, reply_id, request_id, len(state.messages)
                )
            return self._answer_at(state, start, text, cancel)

        return self._submit(request_id, reply_id, prepare)

    def _answer_at(
        self, state: Any, start: int, text: str, cancel: threading.Event
    ) -> Iterator[Any]:
        """ChatState's stream of a reply to ``text`` as its message ``start``, forgetting the
        messages from there on: an edit of the message there, or a new turn at its end. Either
        way ChatState changes nothing until the stream runs, and puts its messages back exactly
        if the reply fails or the stream is closed before it ends."""
        sampling = self._sampling(state, cancel)
        messages = state.messages
        if start == len(messages) - 2 and messages[-1]["role"] == "assistant":
            if messages[start]["content"] == text:  # the last turn asked again: a new reply
                return state.regenerate(**sampling)  # beside the old one
        if start < len(messages):
            return state.edit(start, text, **sampling)
        return state.stream(text, **sampling)

    def branch(
        self,
        request_id: str,
        entry_id: str,
        token_index: int,
        token_id: int | None,
        text: str | None,
    ) -> Task:
        """Queues a branch of the reply ``entry_id`` after its first ``token_index`` tokens and
        ``token_id`` or ``text`` (neither: the model picks). It streams in place of the reply;
        the reply stays a sibling (``siblings`` in the transcript, `switch`)."""
        reply_id = P.new_id("a")

        def prepare(state: Any, cancel: threading.Event) -> Iterator[Any]:
            sampling = self._sampling(state, cancel)
            with self._transcript.lock:
                index, message_id = self.branch_point(entry_id)
                prefix = state.branch_prefix(
                    message_id, token_index, token_id, text=text, stop_token_ids=None
                )
                events = state.branch(message_id, token_index, token_id, text=text, **sampling)
                messages = state.messages
                position = next(i for i, m in enumerate(messages) if m["id"] == message_id)
                self._transcript.start_branch(index, reply_id, request_id, len(messages), position)
                known = self._transcript.records(entry_id)
                records = prefix_records(state.model.tokenizer, prefix, known)
                self.send_records(request_id, reply_id, records)
            return _shifted(events, len(records), state)

        return self._submit(request_id, reply_id, prepare)

    def branch_point(self, entry_id: str) -> tuple[int, str]:
        """The transcript index and ChatState message id of the reply ``entry_id``; raises
        ValueError naming why it cannot be branched."""
        entries = self._transcript.entries
        index = next((i for i, e in enumerate(entries) if e["id"] == entry_id), None)
        if index is None or entries[index]["role"] != "assistant":
            raise ValueError(f"message_id={entry_id!r} is not a reply of this conversation.")
        if not entries[index].get("state_id"):
            raise ValueError(
                f"message_id={entry_id!r}: this reply is not part of the conversation the model "
                "reads (it failed or was stopped before it began), so it cannot be branched."
            )
        return index, entries[index]["state_id"]

    def reply_records(self, entry_id: str) -> list[dict[str, Any]] | None:
        """The token records of the finished reply ``entry_id``: as it streamed, or decoded
        from ChatState's token ids (without probabilities); None when there are none."""
        records = self._transcript.records(entry_id)
        if records:
            return records
        found = self._transcript.find(entry_id)
        state = self._widget.chat_state
        state_id = (found or {}).get("state_id")
        ids = state.token_ids(state_id) if state is not None and state_id else None
        return prefix_records(state.model.tokenizer, ids, None) if ids else None

    def switch(self, entry_id: str, index: int) -> Task:
        """Queues showing sibling ``index`` of the message ``entry_id`` (after the reply being
        made, if any: the conversation does not change under a reply)."""

        def run(cancel: threading.Event) -> None:
            state = self._widget.chat_state
            entries = self._transcript.entries
            at = next((i for i, e in enumerate(entries) if e["id"] == entry_id), None)
            state_id = entries[at].get("state_id") if at is not None else None
            if state is None or state_id is None:
                raise ValueError(f"message_id={entry_id!r} has no siblings to switch between.")
            position = next(i for i, m in enumerate(state.messages) if m["id"] == state_id)
            messages = state.switch(state_id, index)
            with self._transcript.one_update():
                self._transcript.show_path(at, messages, position, state.sibling_counts())
                self._transcript.set_status(tokens_used=self.context_tokens())

        return self._worker.submit(Task(run, stream=False, name="switch"))

    def _submit(
        self,
        request_id: str,
        reply_id: str,
        prepare: Callable[[Any, threading.Event], Iterator[Any]],
        user_id: str | None = None,
    ) -> Task:
        # The reply's turn on the model (see `_in_turn`) is given back only once the task reads
        # as finished, its transcript and callbacks done: training resumes after all of it.
        turn = contextlib.ExitStack()

        def run(cancel: threading.Event) -> Iterator[Any]:
            state = self._widget.chat_state
            if state is None:
                raise RuntimeError(self._widget.status.get("message") or "the model is not loaded")
            return self._observe(self._in_turn(state, reply_id, prepare, cancel, turn))

        def on_start(task: Task) -> None:
            if self._widget.chat_state is not None:  # without a model the status says why
                self._transcript.set_status(state="generating", queued=len(self._worker.pending))

        def on_tokens(task: Task, batch: list[TokenEvent]) -> None:
            self._send_tokens(request_id, reply_id, batch)

        def on_done(task: Task, done: DoneEvent) -> None:
            self._finish(request_id, reply_id, done)

        def on_error(task: Task, exc: BaseException) -> None:
            self._fail(request_id, reply_id, user_id, exc)

        def on_dropped(task: Task) -> None:
            if user_id is not None:
                self._transcript.remove({user_id})
            self._transcript.set_status(queued=len(self._worker.pending))

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
            self._transcript.set_status(queued=len(self._worker.pending))
        return task

    def _in_turn(
        self,
        state: Any,
        reply_id: str,
        prepare: Callable[[Any, threading.Event], Iterator[Any]],
        cancel: threading.Event,
        turn: contextlib.ExitStack,
    ) -> Iterator[Any]:
        """The reply's stream, made while no training step changes the weights (see
        `kerasllm_widget.training.turns`): during ``fit`` it waits for the end of a step. The
        turn is held in ``turn``, which the task closes when it has finished."""
        events = prepare(state, cancel)  # shows the reply as started; computes nothing yet

        def waiting() -> None:
            self._transcript.set_status(message=TRAINING_WAIT_MESSAGE)

        granted = turn.enter_context(model_turns(state.model).reply(cancel, on_wait=waiting))
        if self._widget.status.get("message") == TRAINING_WAIT_MESSAGE:
            self._transcript.set_status(message="")
        if not granted:  # stopped while waiting: nothing was computed, ChatState unchanged
            events.close()
            yield DoneEvent("cancelled", "", [], 0, 0, 0.0, 0.0, 0.0)
            return
        yield from events
        # The stream ended: ChatState took the turn.
        self._transcript.answered(reply_id, list(state.messages), state.sibling_counts())

    def _sampling(self, state: Any, cancel: threading.Event) -> dict[str, Any]:
        settings: dict[str, Any] = {name: getattr(self._widget, name) for name in SAMPLING_NAMES}
        settings["cancel_event"] = cancel
        # The system prompt is applied when a reply starts, on this thread, so that a change made
        # while a reply streams takes effect from the next one.
        state.system_prompt = self._widget.system_prompt or None
        return settings

    def _observe(self, events: Iterator[Any]) -> Iterator[Any]:
        """Passes the stream through, calling the notebook's on_token/on_done callbacks."""
        for event in events:
            if isinstance(event, TokenEvent):
                for callback in list(self.token_callbacks):
                    _safe_call(callback, event)
            elif isinstance(event, DoneEvent):
                for callback in list(self.done_callbacks):
                    _safe_call(callback, event)
            yield event

    # ---- the stream, on the worker thread ----

    def _send_tokens(self, request_id: str, reply_id: str, batch: list[TokenEvent]) -> None:
        self.send_records(request_id, reply_id, [P.token_record(event) for event in batch])

    def send_records(self, request_id: str, reply_id: str, records: list[dict[str, Any]]) -> None:
        """Sends token records of the live reply to the views (and records them for a view
        that catches up later)."""
        with self._transcript.lock:  # the live reply and the views get the tokens in one order
            if self._transcript.add_tokens(reply_id, records):
                self._emit(P.envelope(P.CHAT_TOKEN, request_id, reply_id=reply_id, tokens=records))

    def show_stopped(self) -> None:
        """Shows the reply being made as stopped at once, with the text it had (its engine step
        may still run a moment; nothing it makes after the Stop reaches the panel)."""
        with self._transcript.one_update():
            if self._transcript.show_stopped():
                self._transcript.set_status(state=self.state_between_replies(), queued=0)

    def _finish(self, request_id: str, reply_id: str, done: DoneEvent) -> None:
        stats = P.reply_stats(done)
        tokens_used = self.context_tokens()
        with self._transcript.one_update():
            self._transcript.finish(
                reply_id, done.reply, done.stop_reason, done.notice or "", stats
            )
            self._transcript.set_status(
                state=self.state_between_replies(),
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
                    text=done.reply,
                    notice=done.notice or "",
                    stats=stats,
                )
            )

    def _fail(
        self, request_id: str, reply_id: str, user_id: str | None, exc: BaseException
    ) -> None:
        message = describe(exc)
        log.error("generation failed: %s", "".join(traceback.format_exception(exc)))
        tokens_used = self.context_tokens()
        with self._transcript.one_update():
            self._transcript.fail(reply_id, user_id, request_id, message)
            self._transcript.set_status(
                state=self.state_between_replies(),
                queued=len(self._worker.pending),
                tokens_used=tokens_used,
            )
        self._emit(
            P.envelope(
                P.CHAT_ERROR,
                request_id,
                reply_id=reply_id,
                code=P.ERROR_GENERATION,
                message=message,
            )
        )

    def state_between_replies(self) -> str:
        """The status state once a reply ended: ``generating`` while others wait in the queue."""
        if self._widget.chat_state is None:  # still loading, or failed to load: the user sees it
            return str(self._widget.status.get("state", "loading"))
        return "generating" if self._worker.pending else "ready"

    def context_tokens(self) -> int:
        """How many tokens of the model's context the conversation takes (0 without a model)."""
        state = self._widget.chat_state
        try:
            return int(state.context_tokens()) if state is not None else 0
        except Exception:  # the count is informative; never let it break a reply
            log.exception("counting context tokens failed")
            return 0


def _shifted(events: Iterator[Any], offset: int, state: Any) -> Iterator[Any]:
    """A branch's events as the reply they stream into: token indices after its ``offset``
    prefix tokens, and the whole reply as the final `reply` (ChatState's new message)."""
    for event in events:
        if isinstance(event, TokenEvent):
            event = dataclasses.replace(event, index=event.index + offset)
        elif isinstance(event, DoneEvent):
            event = dataclasses.replace(event, reply=state.messages[-1]["content"])
        yield event


def describe(exc: BaseException) -> str:
    """An exception as the panel shows it: ``"ValueError: the reason"``.

    Example:
        >>> describe(ValueError("too long"))
        'ValueError: too long'
    """
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _safe_call(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:  # a notebook callback's bug must not end the reply
        log.exception("a ChatWidget callback failed")
