"""`ReplyHandle`: what `ChatWidget.send` and `ChatWidget.regenerate` return, to wait on a reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kerasllm_widget.generation.events import DoneEvent
from kerasllm_widget.widgets._worker import Task

if TYPE_CHECKING:
    from kerasllm_widget.widgets.chat_widget import ChatWidget


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
        return "" if event is None else event.reply

    def cancel(self) -> None:
        """Stops this reply (or keeps it from starting if still queued)."""
        self._task.cancel()

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<ReplyHandle {self.request_id} {state}>"
