"""The Attribution view's requests, answered for an `InspectorService` on its worker thread.

``attribution.open`` names the tokens (with which are the tokenizer's special tokens, so a view
can hide the chat template's); ``attribution.request`` scores the tokens before a target with
`inspect.attribution`, reporting each batch of integrated-gradient steps as
``attribution.progress``; ``attribution.stop`` (handled at once, on the kernel's main thread)
ends the run at its next batch and answers it with the error code ``"stopped"``. A newer request
supersedes an older one: one still waiting never starts, one running ends at its next batch.

Example:
    >>> requests = AttributionRequests(model=lambda: model, sequence=source.sequence,
    ...                                send=widget.send)  # doctest: +SKIP
    >>> requests.handle(P.parse_request({"kind": "attribution.stop", "id": "v1"}), service.submit)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kerasllm_widget import inspect
from kerasllm_widget.inspect._sources import tokenizer_of
from kerasllm_widget.widgets import inspect_protocol as P
from kerasllm_widget.widgets.inspected_sequence import InspectedSequence

__all__ = ["KINDS", "MAX_ATTRIBUTION_TOKENS", "AttributionRequests"]

KINDS = frozenset({P.ATTRIBUTION_OPEN, P.ATTRIBUTION_REQUEST, P.ATTRIBUTION_STOP})
# A gradient through the whole model keeps every layer's activations of at least one step: past
# this many tokens (~9 GB for SmolLM2 on a CPU at 2,048) a view asks the user to shorten.
MAX_ATTRIBUTION_TOKENS = 2048
MAX_STEPS = 4096  # inspect.attribution's own bound on integrated-gradient steps

Answer = tuple[dict, list | None]


class _Ended(Exception):
    """Raised from the progress callback to end a run between two batches."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class AttributionRequests:
    """Opens sequences for the Attribution view and computes their attributions.

    Args:
        model: returns the `Llama3CausalLM` (or None while it loads).
        sequence: ``sequence(text)`` -> the `InspectedSequence` to look at (``None``: the
            widget's own text, or the chat's conversation).
        send: ``send(content, buffers)`` to the views (progress reports go out as they happen).
    """

    def __init__(
        self,
        *,
        model: Callable[[], Any],
        sequence: Callable[[str | None], InspectedSequence],
        send: Callable[[dict, list | None], None],
    ) -> None:
        self._model = model
        self._sequence = sequence
        self._send = send
        self._lock = threading.Lock()
        self._current: InspectedSequence | None = None
        self._numbers = itertools.count(1)
        self._issued = 0  # the number of the newest attribution request
        self._stopped = 0  # requests numbered up to this one were stopped

    def handle(self, request: P.Request, submit: Callable[..., None]) -> None:
        """Routes one request (kernel main thread): a stop at once, the rest to ``submit``
        (`InspectorService.submit`, which runs them on the worker)."""
        if request.kind == P.ATTRIBUTION_STOP:
            self.stop()
        elif request.kind == P.ATTRIBUTION_OPEN:
            submit(request, self._open)
        else:
            with self._lock:
                self._issued = number = next(self._numbers)
            submit(request, functools.partial(self._attribute, number=number), request.kind)

    def stop(self) -> None:
        """Stops every attribution asked for so far: the running one at its next batch."""
        with self._lock:
            self._stopped = self._issued

    # ---- on the worker ----

    def _open(self, request: P.Request) -> Answer:
        model = self._model()
        if model is None:
            return _error(request, P.ERROR_NOT_READY, "the model is still loading")
        sequence = self._sequence(request.fields["text"])
        if len(sequence) < 2:
            return _error(
                request,
                P.ERROR_NOT_READY,
                "there is nothing to attribute yet: no tokens to explain",
            )
        if len(sequence) > MAX_ATTRIBUTION_TOKENS:
            return _error(
                request,
                P.ERROR_BAD_REQUEST,
                f"{len(sequence)} tokens; attributions are computed for up to "
                f"{MAX_ATTRIBUTION_TOKENS}",
            )
        special = tokenizer_of(model).special_token_ids
        with self._lock:
            self._current = sequence
        return P.envelope(
            P.ATTRIBUTION_SEQUENCE,
            request.id,
            sequence_id=sequence.sequence_id,
            pieces=sequence.pieces,
            roles=sequence.roles,
            special=[int(i) in special for i in sequence.ids],
            methods=list(inspect.ATTRIBUTION_METHODS),
            max_steps=MAX_STEPS,
        ), None

    def _attribute(self, request: P.Request, number: int) -> Answer:
        fields = request.fields
        sequence_id, position = fields["sequence_id"], fields["target_position"]
        method = fields["method"]
        steps = 32 if fields["steps"] is None else fields["steps"]
        with self._lock:
            current, stopped = self._current, number <= self._stopped
        if stopped:
            return _error(request, P.ERROR_STOPPED, "stopped before it started")
        if current is None or current.sequence_id != sequence_id:
            return _error(request, P.ERROR_SUPERSEDED, "the text or the conversation changed")
        model = self._model()
        if model is None:
            return _error(request, P.ERROR_NOT_READY, "the model is still loading")
        done = [0]

        def progress(finished: int, total: int) -> None:
            done[0] = finished
            self._send(
                P.envelope(
                    P.ATTRIBUTION_PROGRESS,
                    request.id,
                    sequence_id=sequence_id,
                    target_position=position,
                    done=finished,
                    total=total,
                ),
                None,
            )
            with self._lock:
                if number <= self._stopped:
                    raise _Ended(P.ERROR_STOPPED)
                if number < self._issued:  # a newer request waits for this one
                    raise _Ended(P.ERROR_SUPERSEDED)

        started = time.perf_counter()
        gradual = method == "integrated_gradients"  # the one method that takes many passes
        gradient_steps = steps if gradual else 1
        try:
            if gradual:
                progress(0, steps)  # the view shows the run at once, Stop included
            scores = inspect.attribution(
                model,
                current.ids,
                position,
                method=method,
                steps=steps,
                progress=progress if gradual else None,
            )
        except _Ended as ended:
            message = (
                f"stopped after {done[0]} of {gradient_steps} steps"
                if ended.code == P.ERROR_STOPPED
                else "a newer request replaced this one"
            )
            return _error(request, ended.code, message)
        except ValueError as exc:  # a position or method out of range, named by inspect
            return _error(request, P.ERROR_BAD_REQUEST, str(exc))
        headers, buffers = P.pack_arrays({"scores": np.asarray(scores, np.float32)})
        return P.envelope(
            P.ATTRIBUTION_RESULT,
            request.id,
            sequence_id=sequence_id,
            target_position=position,
            target_id=int(current.ids[position]),
            method=method,
            steps=gradient_steps,
            compute_s=time.perf_counter() - started,
            scores=headers["scores"],
        ), buffers


def _error(request: P.Request, code: str, message: str) -> Answer:
    return P.envelope(
        P.INSPECT_ERROR, request.id, request_kind=request.kind, code=code, message=message
    ), None
