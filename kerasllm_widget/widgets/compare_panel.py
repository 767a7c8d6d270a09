"""The Compare view: one token sequence scored under two models (`inspect.compare_models`).

The ChatWidget's Compare tab (`ChatWidget.compare_with`) scores its conversation; the standalone
`CompareView` scores a text. The view colours each token by how much more (or less) likely
model B found it than model A, shows both models' top-k at a clicked position, and asks model B
to continue greedily from there ("what would B say from here"). The work runs on a
`GenerationWorker` (the chat's own, behind its replies), so the kernel's main thread stays free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kerasllm_widget import inspect
from kerasllm_widget.generation.api import stream
from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.inspect._sources import tokenizer_of
from kerasllm_widget.inspect.pieces import piece
from kerasllm_widget.widgets import steer_protocol as P
from kerasllm_widget.widgets._worker import GenerationWorker
from kerasllm_widget.widgets.inspect_protocol import pack_arrays
from kerasllm_widget.widgets.inspected_sequence import InspectedSequence
from kerasllm_widget.widgets.worker_panel import Job, NotReady, WorkerPanel

COMPARE_TOP_K = 5
CONTINUE_MAX_NEW_TOKENS = 32  # "a few dozen tokens": enough to see where B would go
CONTINUE_INTERVAL_S = 0.1  # the least time between two compare.continuation messages


def resolve_model(other: Any, argument: str = "other") -> Any:
    """A `Llama3CausalLM` from a model, a preset name (loaded now) or a ChatWidget/ChatState.

    Example:
        >>> resolve_model("smollm2-135m-instruct").info["name"]  # doctest: +SKIP
        'smollm2-135m-instruct'
    """
    if isinstance(other, str):
        from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

        return Llama3CausalLM.from_preset(other)
    if hasattr(other, "backbone") and hasattr(other, "tokenizer"):
        return other
    state = getattr(other, "chat_state", other)
    model = getattr(state, "model", None)
    if model is not None and hasattr(model, "backbone"):
        return model
    if hasattr(other, "chat_state"):
        raise ValueError(
            f"{argument}: that ChatWidget's model is still loading; wait_ready() first."
        )
    raise TypeError(
        f"{argument}={type(other).__name__}: give a Llama3CausalLM, a preset name "
        "(e.g. 'smollm2-135m-instruct') or a ChatWidget."
    )


def model_name(model: Any, fallback: str) -> str:
    """The name the view labels a model with (its preset, dtype)."""
    info = dict(getattr(model, "info", {}) or {})
    name = str(info.get("name") or fallback)
    return f"{name} ({info['dtype']})" if info.get("dtype") else name


class ComparePanel(WorkerPanel):
    """The kernel side of a Compare view (``compare.*`` messages).

    Args:
        host: the widget whose ``send(content, buffers)`` reaches the view.
        worker: the `GenerationWorker` the scoring and continuations run on.
        model_a: returns model A (None while it loads).
        sequence: returns the `InspectedSequence` to compare (the conversation, or a text).

    Example:
        >>> panel = ComparePanel(chat, worker, model_a=lambda: model, sequence=lambda: seq)  # doctest: +SKIP
        >>> panel.set_model_b(other)  # doctest: +SKIP
    """

    namespace = "compare."

    def __init__(
        self,
        host: Any,
        worker: GenerationWorker,
        *,
        model_a: Callable[[], Any],
        sequence: Callable[[], InspectedSequence],
    ) -> None:
        super().__init__(host, worker)
        self._model_a = model_a
        self._sequence = sequence
        self.model_b: Any = None
        self._scored: InspectedSequence | None = None  # what the view's positions refer to

    def set_model_b(self, model_b: Any) -> dict[str, str]:
        """Checks that ``model_b`` reads model A's tokens and keeps it; returns both names."""
        model_a = self._model_a()
        if model_a is None:
            raise ValueError("the first model is still loading; wait_ready() first.")
        vocab_a = int(model_a.backbone.vocabulary_size)
        vocab_b = int(model_b.backbone.vocabulary_size)
        if vocab_a != vocab_b:
            raise ValueError(
                f"other has {vocab_b} tokens in its vocabulary and this model {vocab_a}: "
                "compare models that share a tokenizer."
            )
        self.model_b = model_b
        return {"a": model_name(model_a, "A"), "b": model_name(model_b, "B")}

    def jobs(self) -> dict[str, Job]:
        return {P.COMPARE_REQUEST: self._score, P.COMPARE_CONTINUE: self._continue}

    def ready(self) -> None:
        if self._model_a() is None or self.model_b is None:
            raise NotReady("no second model yet: chat.compare_with(other)")

    # ---- jobs (worker thread) ----

    def _score(self, request: P.Request, cancel: threading.Event) -> None:
        sequence = self._sequence()
        if len(sequence) < 2:
            raise NotReady("there is nothing to compare yet: say something in the chat")
        model_a = self._model_a()
        result = inspect.compare_models(model_a, self.model_b, sequence.ids, top_k=COMPARE_TOP_K)
        self._scored = sequence
        tokenizer = tokenizer_of(model_a)
        wanted = np.unique(np.concatenate([result.top_ids_a.ravel(), result.top_ids_b.ravel()]))
        labels = {str(int(i)): piece(tokenizer, int(i)) for i in wanted}
        headers, buffers = pack_arrays(
            {
                "token_ids": result.token_ids,
                "logprobs_a": result.logprobs_a,
                "logprobs_b": result.logprobs_b,
                "kl": result.kl,
                "top_ids_a": result.top_ids_a,
                "top_probs_a": result.top_probs_a,
                "top_ids_b": result.top_ids_b,
                "top_probs_b": result.top_probs_b,
            }
        )
        names = [model_name(model_a, "A"), model_name(self.model_b, "B")]
        self.send(
            P.envelope(
                P.COMPARE_RESULT,
                request.id,
                sequence_id=sequence.sequence_id,
                names=names,
                pieces=sequence.pieces,
                roles=sequence.roles,
                labels=labels,
                arrays=headers,
            ),
            buffers,
        )

    def _continue(self, request: P.Request, cancel: threading.Event) -> None:
        scored, position = self._scored, request.fields["position"]
        if scored is None or scored.sequence_id != request.fields["sequence_id"]:
            raise NotReady("the conversation changed: compare it again first")
        if not 0 <= position < len(scored):
            raise ValueError(f"position={position}: use 0..{len(scored) - 1}")
        limit = int(request.fields["max_new_tokens"] or CONTINUE_MAX_NEW_TOKENS)
        if not 1 <= limit <= 512:
            raise ValueError(f"max_new_tokens={limit}: use 1..512")
        text, last = "", 0.0
        prompt = [int(i) for i in scored.ids[: position + 1]]
        for event in stream(
            self.model_b, prompt, max_new_tokens=limit, temperature=0.0, cancel_event=cancel
        ):
            if isinstance(event, TokenEvent):
                text += event.text
                if time.monotonic() - last >= CONTINUE_INTERVAL_S:
                    last = time.monotonic()
                    self._continuation(request, text, False)
            elif isinstance(event, DoneEvent):
                self._continuation(request, event.reply, True)

    # ---- helpers ----

    def _continuation(self, request: P.Request, text: str, done: bool) -> None:
        fields = request.fields
        self.send(
            P.envelope(
                P.COMPARE_CONTINUATION,
                request.id,
                sequence_id=fields["sequence_id"],
                position=fields["position"],
                text=text,
                done=done,
            )
        )
