"""One background thread per widget that runs generation (and model loading) one task at a time.

The kernel's main thread only receives messages; a reply is produced here, so a Stop pressed in the
browser reaches the kernel while the model computes, and sets the task's cancel event, which the
engine checks between decode steps.

Token events are not forwarded one by one: they are batched so that the front end gets at most one
message every ``flush_interval`` seconds (50 ms), with the first token of a reply sent at once so
the time to first token is not delayed. A small flusher thread sends a batch when its interval is up
even while the engine is busy computing the next token.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from kerasllm_widget.generation.events import DoneEvent, TokenEvent

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05


class Task:
    """One unit of work for the worker, and the handle to wait on it.

    ``run(cancel_event)`` either returns an iterable of stream events (``stream=True``: zero or more
    `TokenEvent`s then one `DoneEvent`) or a plain value (``stream=False``, e.g. loading a model).
    The callbacks run on the worker thread, in this order: ``on_start``, ``on_tokens`` (batches),
    then one of ``on_done`` / ``on_error`` / ``on_dropped`` (never started because it was cancelled
    while queued); ``after`` runs last of all, once the task reads as finished.
    """

    def __init__(
        self,
        run: Callable[[threading.Event], Any],
        *,
        stream: bool = True,
        on_start: Callable[[Task], None] | None = None,
        on_tokens: Callable[[Task, list[TokenEvent]], None] | None = None,
        on_done: Callable[[Task, Any], None] | None = None,
        on_error: Callable[[Task, BaseException], None] | None = None,
        on_dropped: Callable[[Task], None] | None = None,
        after: Callable[[Task], None] | None = None,
        name: str = "",
    ) -> None:
        self.run = run
        self.stream = stream
        self.on_start = on_start
        self.on_tokens = on_tokens
        self.on_done = on_done
        self.on_error = on_error
        self.on_dropped = on_dropped
        self.after = after
        self.name = name
        self.cancel_event = threading.Event()
        self.result: Any = None  # the DoneEvent of a stream, or run's return value
        self.exception: BaseException | None = None
        self.started = False
        self.dropped = False
        self._finished = threading.Event()

    def cancel(self) -> None:
        """Asks the task to stop (between decode steps), or not to start if it is still queued."""
        self.cancel_event.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the task ended (done, failed or dropped); False if `timeout` passed first."""
        return self._finished.wait(timeout)


class _Batcher:
    """Collects token events and hands them on in batches at most every `interval` seconds."""

    def __init__(self, emit: Callable[[list[TokenEvent]], None], interval: float) -> None:
        self._emit = emit
        self._interval = interval
        self._cv = threading.Condition()
        self._buffer: list[TokenEvent] = []
        self._last_emit = float("-inf")
        self._closed = False
        self._thread = threading.Thread(
            target=self._loop, name="kerasllm-token-flusher", daemon=True
        )
        self._thread.start()

    def add(self, event: TokenEvent) -> None:
        with self._cv:
            self._buffer.append(event)
            if time.monotonic() - self._last_emit >= self._interval:
                self._emit_locked()
            else:
                self._cv.notify()

    def close(self) -> None:
        """Sends what is left, now (the end of a reply is never held back), and stops the flusher."""
        with self._cv:
            self._closed = True
            if self._buffer:
                self._emit_locked()
            self._cv.notify()
        self._thread.join()

    def _loop(self) -> None:
        with self._cv:
            while not self._closed:
                if not self._buffer:
                    self._cv.wait()
                    continue
                remaining = self._last_emit + self._interval - time.monotonic()
                if remaining > 0:
                    self._cv.wait(remaining)
                    continue
                self._emit_locked()

    def _emit_locked(self) -> None:
        # Emitting under the lock keeps batches in order whichever thread sends them.
        batch, self._buffer = self._buffer, []
        self._last_emit = time.monotonic()
        try:
            self._emit(batch)
        except Exception:  # a failing sink must not stop generation
            log.exception("sending a token batch failed")


class GenerationWorker:
    """Runs `Task`s on one daemon thread, first in first out.

    Example:
        >>> worker = GenerationWorker()
        >>> task = worker.submit(Task(lambda cancel: 42, stream=False))
        >>> task.wait(5), task.result
        (True, 42)
        >>> worker.close()
    """

    def __init__(
        self, *, flush_interval: float = FLUSH_INTERVAL_S, name: str = "kerasllm-generation"
    ):
        self.flush_interval = flush_interval
        self._name = name
        self._queue: collections.deque[Task] = collections.deque()
        self._cv = threading.Condition()
        self._current: Task | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        _live_workers.add(self)

    @property
    def current(self) -> Task | None:
        """The task running now, if any."""
        return self._current

    @property
    def pending(self) -> list[Task]:
        """Tasks waiting to start, oldest first."""
        with self._cv:
            return list(self._queue)

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._current is not None or bool(self._queue)

    def submit(self, task: Task) -> Task:
        with self._cv:
            if self._closed:
                raise RuntimeError("the generation worker is closed")
            self._queue.append(task)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cv.notify()
        return task

    def cancel_current(self) -> Task | None:
        """Stops the running task (it ends at its next decode step); returns it."""
        task = self._current
        if task is not None:
            task.cancel()
        return task

    def drop_pending(self) -> list[Task]:
        """Removes queued tasks before they start; each gets ``on_dropped`` and is finished."""
        with self._cv:
            dropped = list(self._queue)
            self._queue.clear()
        for task in dropped:
            task.cancel()
            self._finish_dropped(task)
        return dropped

    def close(self, timeout: float | None = 5.0) -> None:
        """Cancels everything and stops the thread (waiting at most `timeout` for the running task)."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self.drop_pending()
        self.cancel_current()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                task = self._queue.popleft()
                self._current = task
            try:
                if task.cancel_event.is_set():
                    self._finish_dropped(task)
                else:
                    self._run(task)
            finally:
                with self._cv:
                    self._current = None

    def _finish_dropped(self, task: Task) -> None:
        task.dropped = True
        self._call(task.on_dropped, task)
        task._finished.set()
        self._call(task.after, task)

    def _run(self, task: Task) -> None:
        task.started = True
        self._call(task.on_start, task)
        try:
            if task.stream:
                task.result = self._stream(task, task.run(task.cancel_event))
            else:
                task.result = task.run(task.cancel_event)
        except BaseException as exc:  # noqa: BLE001  (reported to the front end, never lost)
            task.exception = exc
            self._call(task.on_error, task, exc)
        else:
            self._call(task.on_done, task, task.result)
        finally:
            task._finished.set()
            self._call(task.after, task)

    def _stream(self, task: Task, events: Iterable[Any]) -> DoneEvent:
        def emit(batch: list[TokenEvent]) -> None:
            if task.on_tokens is not None:
                task.on_tokens(task, batch)

        batcher = _Batcher(emit, self.flush_interval)
        done: DoneEvent | None = None
        try:
            # Read the stream to its end, not just to the DoneEvent: a generator may record the
            # finished turn after yielding it, and closing it early would skip that.
            for event in events:
                if done is not None:
                    continue
                if isinstance(event, TokenEvent):
                    batcher.add(event)
                elif isinstance(event, DoneEvent):
                    done = event
                    batcher.close()
        finally:
            # Tokens generated before a failure are still delivered, ahead of the error.
            batcher.close()
            close = getattr(events, "close", None)
            if close is not None:
                close()
        if done is None:
            raise RuntimeError("the generation stream ended without a DoneEvent")
        return done

    @staticmethod
    def _call(callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("a generation callback failed")


# A reply still running inside XLA when the interpreter finalizes aborts the process; at exit
# every worker stops its reply (within one decode chunk) and its thread is joined.
_live_workers: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_workers() -> None:
    for worker in list(_live_workers):
        worker.close(timeout=10.0)
