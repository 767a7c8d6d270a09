"""What the Steering and Compare panels share: requests of one namespace run as tasks on a
`GenerationWorker`, every failure answered as a ``steer.error`` message, Stop for the panel's own
tasks only."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kerasllm_widget.widgets import steer_protocol as P
from kerasllm_widget.widgets._worker import GenerationWorker, Task
from kerasllm_widget.widgets.envelope import request_id_of

log = logging.getLogger(__name__)

Job = Callable[[P.Request, threading.Event], None]


class NotReady(RuntimeError):
    """Nothing to do yet (no model, no vector, nothing to compare): answered ``not_ready``."""


class WorkerPanel:
    """The kernel side of one tab whose requests (kinds ``<namespace>.*``) run on ``worker``.

    Subclasses name their ``namespace`` and map request kinds to jobs in ``jobs()``; a job is
    ``job(request, cancel_event)`` and answers through ``send``. ``ready()`` raises `NotReady`
    when no job can run yet.

    Example:
        >>> class Panel(WorkerPanel):
        ...     namespace = "steer."
        ...     def jobs(self): return {"steer.open": self.open}  # doctest: +SKIP
    """

    namespace = ""

    def __init__(self, host: Any, worker: GenerationWorker) -> None:
        self._host = host
        self._worker = worker
        self._lock = threading.Lock()
        self._tasks: set[Task] = set()

    def jobs(self) -> dict[str, Job]:
        raise NotImplementedError

    def ready(self) -> None:
        """Raises `NotReady` when no job can run yet."""

    def handle(self, content: Any, buffers: Any = None) -> bool:
        """Handles ``content`` if it belongs to this panel's namespace; False if not."""
        if not (
            isinstance(content, dict) and str(content.get("kind", "")).startswith(self.namespace)
        ):
            return False
        try:
            request = P.parse_request(content)
        except P.ProtocolError as exc:
            self.error(request_id_of(content), str(content.get("kind")), P.ERROR_BAD_REQUEST, exc)
            return True
        self.submit(request, self.jobs()[request.kind])
        return True

    def submit(self, request: P.Request, job: Job) -> Task:
        """Runs ``job`` on the worker, behind what is already there."""

        def run(cancel: threading.Event) -> None:
            self.ready()
            job(request, cancel)

        def failed(task: Task, exc: BaseException) -> None:
            code = P.ERROR_NOT_READY if isinstance(exc, NotReady) else P.ERROR_FAILED
            if not isinstance(exc, NotReady):
                log.error("%s failed", request.kind, exc_info=exc)
            self.error(request.id, request.kind, code, exc)

        def dropped(task: Task) -> None:
            self.error(request.id, request.kind, P.ERROR_CANCELLED, "stopped")

        def after(task: Task) -> None:
            with self._lock:
                self._tasks.discard(task)

        task = Task(
            run, stream=False, on_error=failed, on_dropped=dropped, after=after, name=request.kind
        )
        with self._lock:
            self._tasks.add(task)
        return self._worker.submit(task)

    def cancel(self) -> None:
        """Stops this panel's task now running and drops those waiting (not the chat's)."""
        with self._lock:
            tasks = list(self._tasks)
        for task in tasks:
            task.cancel()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until the work submitted so far has ended (for tests and notebooks)."""
        return self._worker.submit(Task(lambda cancel: None, stream=False)).wait(timeout)

    def error(self, request_id: str, kind: str, code: str, error: Any) -> None:
        self.send(
            P.envelope(P.STEER_ERROR, request_id, request_kind=kind, code=code, message=str(error))
        )

    def send(self, content: dict, buffers: list | None = None) -> None:
        if getattr(self._host, "comm", None) is None:  # closed: nobody to tell
            return
        self._host.send(content, buffers or None)
