"""Answers the inspector views' requests for one widget, computing on a worker thread.

A standalone inspector widget and the ChatWidget's inspector tabs speak the same protocol
(`inspect_protocol`); this class holds what they share: which sequence is being looked at, the
attention maps computed for it so far, the step-mode session, and one worker thread, so that a
slow attention pass never blocks the kernel's main thread (where Stop and new requests arrive).
A newer request of a kind supersedes an older one that has not started: scrubbing through
layers computes the layer the user stopped on, not every layer passed on the way.

Attention: once a view has opened a sequence, the forward pass runs on through every block in
the background, one block per job and behind any request the views make meanwhile, reporting
its progress (``attention.progress``). A map of a prepared layer then costs one head's softmax.
When the conversation grows, the new pass reuses the old one's work on the shared prefix.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from kerasllm_widget import inspect
from kerasllm_widget.widgets import attribution_requests
from kerasllm_widget.widgets import inspect_protocol as P
from kerasllm_widget.widgets.envelope import request_id_of
from kerasllm_widget.widgets.inspected_sequence import InspectedSequence
from kerasllm_widget.widgets.lens_requests import LensRequests
from kerasllm_widget.widgets.probabilities_answer import probabilities_answer
from kerasllm_widget.widgets.step_mode import StepMode

log = logging.getLogger(__name__)

SLOW_REQUEST_S = 1.0  # requests slower than this are logged
PROGRESS_INTERVAL_S = 0.25  # the least time between two progress reports of the forward pass
# Attention maps are T x T per head: past this many tokens a view asks the user to shorten.
MAX_ATTENTION_TOKENS = 4096


class InspectorService:
    """The kernel side of the inspector views of one widget.

    Args:
        widget: the anywidget whose ``send(content, buffers)`` reaches the views.
        model: returns the `Llama3CausalLM` (or None while it loads).
        sequence: ``sequence(text)`` -> the `InspectedSequence` to inspect; ``text=None`` means the
            widget's own (its text box, or the chat's conversation).
        step_prompt: ``step_prompt(text)`` -> prompt ids for the step mode (default: the sequence).
        settings: returns the sampling settings for step-mode proposals.
        compare_tokenizer: returns a second tokenizer for side-by-side token views, or None.
        labels: returns the names of the tokenizers, for the token views' headings.
        batch: returns the texts of the preprocessor view (default: the sequence's text).
        busy: returns True while the model is busy elsewhere (a chat generating); background
            work waits for the next conversation change instead of competing for it.

    Example:
        >>> service = InspectorService(widget, model=lambda: model,
        ...                            sequence=lambda text: text_sequence(model, text or ""))  # doctest: +SKIP
        >>> widget.on_msg(lambda w, content, buffers: service.handle(content, buffers))  # doctest: +SKIP
    """

    def __init__(
        self,
        widget: Any,
        *,
        model: Callable[[], Any],
        sequence: Callable[[str | None], InspectedSequence],
        step_prompt: Callable[[str | None], np.ndarray] | None = None,
        settings: Callable[[], dict] | None = None,
        compare_tokenizer: Callable[[], Any] | None = None,
        labels: Callable[[], list[str]] | None = None,
        batch: Callable[[], list[str]] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._widget = widget
        self._model = model
        self._sequence = sequence
        self._compare_tokenizer = compare_tokenizer or (lambda: None)
        self._labels = labels or (lambda: [])
        self._batch = batch or (lambda: [self._sequence(None).text])
        self._busy = busy or (lambda: False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasllm-inspect")
        self._counter = itertools.count(1)
        self._latest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._current: InspectedSequence | None = None
        self._maps: inspect.AttentionMaps | None = None
        self._previous_maps: inspect.AttentionMaps | None = None  # reused for a shared prefix
        self._attention_seen = False  # a view has looked at attention: keep its pass warm
        self._waiting = 0  # submitted requests not yet started (background work yields to them)
        self._last_progress = 0.0
        self._step_mode = StepMode(
            step_prompt or (lambda text: sequence(text).ids), settings or (lambda: {})
        )
        self._preparing: str | None = None  # the sequence whose forward pass idle work extends
        self.timings: dict[str, float] = {}  # the last compute time of each request kind
        self.lens = LensRequests(model=model, sequence=sequence, send=self._send)
        self._closed = False
        self._attribution = attribution_requests.AttributionRequests(
            model=model, sequence=sequence, send=self._send
        )

    # ---- entry point (kernel main thread) ----

    def handle(self, content: Any, buffers: Any = None) -> bool:
        """Handles ``content`` if it is an inspector message; False if it is someone else's."""
        if not P.is_inspector_message(content):
            return False
        try:
            request = P.parse_request(content)
        except P.ProtocolError as exc:
            self._error(
                request_id_of(content), str(content.get("kind")), P.ERROR_BAD_REQUEST, str(exc)
            )
            return True
        if request.kind in attribution_requests.KINDS:
            self._attribution.handle(request, self.submit)
            return True
        handler = {
            P.TOKENS_REQUEST: (self._tokens, None),
            P.PREPROCESS_REQUEST: (self._preprocess, None),
            P.ATTENTION_OPEN: (self._attention_open, None),
            P.ATTENTION_REQUEST: (
                self._attention,
                "attention.region" if request.fields.get("region") else "attention.request",
            ),
            P.ATTENTION_OVERVIEW: (self._overview_start, "attention.overview"),
            P.PROBABILITIES_REQUEST: (self._probabilities, "probabilities.request"),
            P.STEP_REQUEST: (self._step_request, None),
            P.LENS_REQUEST: (self.lens.answer, None),
        }[request.kind]
        self.submit(request, *handler)
        return True

    def submit(self, request: P.Request, fn: Callable, supersede: str | None = None) -> None:
        """Runs ``fn(request)`` on the worker; it returns ``(content, buffers)`` to send or None."""
        if self._closed:
            return
        token = next(self._counter)
        with self._lock:
            self._waiting += 1
            if supersede:
                self._latest[supersede] = token

        def job() -> None:
            with self._lock:
                self._waiting -= 1
            if supersede and self._latest.get(supersede) != token:
                self._error(
                    request.id,
                    request.kind,
                    P.ERROR_SUPERSEDED,
                    "a newer request replaced this one",
                )
                return
            started = time.perf_counter()
            try:
                answer = fn(request)
            except _NotReady as exc:
                self._error(request.id, request.kind, P.ERROR_NOT_READY, str(exc))
                return
            except Exception as exc:  # answered as a message, never raised into the void
                log.exception("inspector request %s failed", request.kind)
                self._error(
                    request.id, request.kind, P.ERROR_FAILED, f"{type(exc).__name__}: {exc}"
                )
                return
            elapsed = time.perf_counter() - started
            self.timings[request.kind] = elapsed
            if elapsed > SLOW_REQUEST_S:
                log.info("inspector request %s took %.2f s", request.kind, elapsed)
            if answer is not None:
                self._send(*answer)

        self._executor.submit(job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until every request submitted so far has been answered (for tests and notebooks)."""
        done = threading.Event()
        self._executor.submit(done.set)
        return done.wait(timeout)

    def close(self) -> None:
        self._closed = True
        self._attribution.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- helpers ----

    def _send(self, content: dict, buffers: list | None = None) -> None:
        if getattr(self._widget, "comm", None) is None:  # closed: nobody to tell
            return
        self._widget.send(content, buffers or None)

    def _error(self, request_id: str, request_kind: str, code: str, message: str) -> None:
        self._send(
            P.envelope(
                P.INSPECT_ERROR, request_id, request_kind=request_kind, code=code, message=message
            )
        )

    def _require_model(self):
        model = self._model()
        if model is None:
            raise _NotReady("the model is still loading")
        return model

    def _open(self, text: str | None) -> InspectedSequence:
        sequence = self._sequence(text)
        if len(sequence) == 0:
            raise _NotReady("there are no tokens to inspect yet")
        if len(sequence) > MAX_ATTENTION_TOKENS:
            raise ValueError(
                f"{len(sequence)} tokens; attention maps are shown for up to {MAX_ATTENTION_TOKENS}"
            )
        with self._lock:
            if self._current is None or self._current.sequence_id != sequence.sequence_id:
                self._current = sequence
                if self._maps is not None:
                    self._previous_maps = self._maps
                self._maps = None
                self._latest["attention.overview"] = next(self._counter)  # stops a running overview
            return self._current

    def _maps_for(self, sequence_id: str) -> inspect.AttentionMaps:
        with self._lock:
            current = self._current
        if current is None or current.sequence_id != sequence_id:
            raise _Superseded()
        if self._maps is None:
            model = self._require_model()
            previous = self._previous_maps
            if previous is not None and previous.backbone is not getattr(model, "backbone", model):
                previous = None
            self._maps = inspect.AttentionMaps(model, current.ids, previous=previous)
            self._previous_maps = None
        return self._maps

    # ---- tokens and preprocessing ----

    def _tokens(self, request: P.Request):
        model = self._model()
        text = request.fields["text"]
        if text is None:
            text = self._sequence(None).text
        tables = [inspect.tokens(model, text).to_dict()]
        compare = request.fields["compare"] is not False  # compares unless told not to
        other = self._compare_tokenizer() if compare else None
        if other is not None:
            tables.append(inspect.tokens(other, text).to_dict())
        labels = self._labels() or [f"tokenizer {i + 1}" for i in range(len(tables))]
        return P.envelope(
            P.TOKENS_RESULT, request.id, text=text, tables=tables, labels=labels[: len(tables)]
        ), None

    def _preprocess(self, request: P.Request):
        model = self._require_model()
        texts = request.fields["texts"]
        if texts is None:
            texts = self._batch()
        length = int(request.fields["sequence_length"])
        if not 1 <= length <= 4096:
            raise ValueError("sequence_length must be between 1 and 4096")
        table = inspect.preprocess(model, texts, sequence_length=length)
        return P.envelope(P.PREPROCESS_RESULT, request.id, table=table.to_dict()), None

    # ---- attention ----

    def _attention_open(self, request: P.Request):
        model = self._require_model()
        sequence = self._open(request.fields["text"])
        self._attention_seen = True
        self._start_preparing(sequence.sequence_id)
        return (
            P.envelope(
                P.ATTENTION_SEQUENCE,
                request.id,
                sequence_id=sequence.sequence_id,
                pieces=sequence.pieces,
                roles=sequence.roles,
                length=len(sequence),
                num_layers=len(model.backbone.transformer_layers),
                num_heads=int(model.backbone.num_query_heads),
            ),
            None,
        )

    def _attention(self, request: P.Request):
        sequence_id, layer, head = (request.fields[k] for k in ("sequence_id", "layer", "head"))
        try:
            maps = self._maps_for(sequence_id)
        except _Superseded:
            self._error(request.id, request.kind, P.ERROR_SUPERSEDED, "the conversation changed")
            return None
        started = time.perf_counter()
        index = maps.layer_index(layer)
        while maps.prepared_layers <= index:  # the forward pass up to it, reported as it goes
            maps.prepare_next_layer()
            self._progress(sequence_id, maps)
        # What a view draws first is the map shrunk to about its pixels (``cells``), computed
        # and shrunk where the map is; zooming in then asks for a region at full resolution.
        cells, region = request.fields["cells"], request.fields["region"]
        buffers: list = []
        extra: dict = {"block": 1, "region": None}
        if region is not None:
            quantized = maps.region(index, head, rows=region[:2], cols=region[2:])
            extra["region"] = list(region)
        elif cells is not None:
            overview = maps.overview(index, head, cells=cells)
            quantized = overview.codes
            extra["block"] = overview.block
        else:
            quantized = maps.quantized(index, head)
        compute_s = time.perf_counter() - started
        header = P.pack_quantized(quantized, buffers)
        if region is None and cells is not None:
            extra["row_max"] = P.pack_arrays({"row_max": overview.row_max}, buffers)[0]["row_max"]
        self._start_preparing(sequence_id)
        return (
            P.envelope(
                P.ATTENTION_RESULT,
                request.id,
                sequence_id=sequence_id,
                layer=int(layer),
                head=head,
                compute_s=compute_s,
                array=header,
                **extra,
            ),
            buffers,
        )

    def refresh(self) -> None:
        """The conversation changed: if a view has looked at attention, its forward pass over
        the new conversation starts now, in the background (reusing the old one's prefix)."""
        if not self._attention_seen or self._closed:
            return

        def open_current() -> None:
            try:
                sequence = self._open(None)
                self._require_model()
            except (_NotReady, ValueError):
                return
            self._start_preparing(sequence.sequence_id)

        self._executor.submit(self._quiet, open_current)

    def _start_preparing(self, sequence_id: str) -> None:
        if self._preparing != sequence_id:  # one chain of background work per sequence
            self._preparing = sequence_id
            self._executor.submit(self._prepare, sequence_id)

    def _prepare(self, sequence_id: str) -> None:
        """Background work: one more block of the forward pass, then queued again behind
        whatever the views asked meanwhile, so the layer a user picks next opens at the cost of
        its own attention. Stops when the sequence changes, every block has run, or the model is
        busy generating (the next conversation change starts it again)."""
        if self._closed:
            return
        with self._lock:
            current, waiting = self._current, self._waiting
        if current is None or current.sequence_id != sequence_id or self._busy():
            self._preparing = None
            return
        if waiting:  # a view's request goes first
            self._executor.submit(self._prepare, sequence_id)
            return
        try:
            maps = self._maps_for(sequence_id)
            # A new length first compiles what the views run, so that no click waits for it.
            more = maps.warm_up() or maps.prepare_next_layer()
            self._progress(sequence_id, maps)
        except Exception:  # background work: a failure shows up when the layer is asked for
            log.exception("preparing attention layers failed")
            more = False
        if more and not self._closed:
            self._executor.submit(self._prepare, sequence_id)
        else:
            self._preparing = None

    def _progress(self, sequence_id: str, maps: inspect.AttentionMaps) -> None:
        """Tells the views how far the forward pass has come (at most a few times a second)."""
        ready = maps.prepared_layers
        now = time.perf_counter()
        if ready < maps.num_layers and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        self._send(
            P.envelope(
                P.ATTENTION_PROGRESS,
                "",  # not an answer: every view of the sequence may show it
                sequence_id=sequence_id,
                ready_layers=ready,
                num_layers=maps.num_layers,
                reused_tokens=maps.reused_tokens,
            )
        )

    def _quiet(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("inspector background work failed")

    def _overview_start(self, request: P.Request):
        self._overview_layer(request, 0, self._latest["attention.overview"])
        return None

    def _overview_layer(self, request: P.Request, layer: int, token: int) -> None:
        # One layer per job, re-queued behind whatever arrived meanwhile: a click on a head is
        # answered between two layers of the overview instead of after all of them.
        if self._latest.get("attention.overview") != token:
            return
        sequence_id = request.fields["sequence_id"]
        size = max(8, min(int(request.fields["size"]), 256))
        try:
            maps = self._maps_for(sequence_id)
        except _Superseded:
            self._error(request.id, request.kind, P.ERROR_SUPERSEDED, "the conversation changed")
            return
        thumbnails = maps.thumbnails(layer, size=size)
        buffers: list = []
        header = P.pack_quantized(
            inspect.quantize(thumbnails, bits=8, gamma=0.5, per_row=True), buffers
        )
        self._send(
            P.envelope(
                P.ATTENTION_THUMBNAILS,
                request.id,
                sequence_id=sequence_id,
                layer=layer,
                num_layers=maps.num_layers,
                array=header,
            ),
            buffers,
        )
        if layer + 1 < maps.num_layers and not self._closed:
            self._executor.submit(self._guarded, self._overview_layer, request, layer + 1, token)

    def _guarded(self, fn: Callable, request: P.Request, *args: Any) -> None:
        try:
            fn(request, *args)
        except Exception as exc:
            log.exception("inspector request %s failed", request.kind)
            self._error(request.id, request.kind, P.ERROR_FAILED, f"{type(exc).__name__}: {exc}")

    # ---- probabilities ----

    def _probabilities(self, request: P.Request):
        sequence = self._sequence(None)
        if len(sequence) == 0:
            raise _NotReady("there are no tokens to score yet")
        return probabilities_answer(self._require_model(), sequence, request.id)

    # ---- step mode ----

    def _step_request(self, request: P.Request):
        fields = request.fields
        state = self._step_mode.act(
            self._require_model(), fields["action"], fields["token_id"], fields["text"]
        )
        return P.envelope(P.STEP_STATE, request.id, **state), None


class _NotReady(RuntimeError):
    pass


class _Superseded(RuntimeError):
    pass
