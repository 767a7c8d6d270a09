"""The logit lens for the views: one pass per sequence, kept, and sent as 16-bit top-k arrays.

A lens of a 1,024-token SmolLM2 conversation takes about 38 s on a small CPU, and a view of it
must show in well under a second once that is done; so the pass runs once per sequence (on the
inspector service's worker thread), the answer it becomes is built once, and every later
request for that sequence (another display, a tab shown again) is sent those same bytes.

What the view receives (`lens_arrays`): the top ``k`` ids (int32) and probabilities (float16,
3 significant digits) at every layer and position, the entropy (float16), and for each position
the token the chart follows (``target_ids``: the one that came next, or at the last position
the model's own choice) with its rank (int32) and probability (float16) at every layer. The
token texts travel once per distinct id (``labels``).

Example:
    >>> requests = LensRequests(model=lambda: model, sequence=source.sequence, send=widget.send)  # doctest: +SKIP
    >>> content, buffers = requests.answer(parse_request({"kind": "lens.request", "id": "v1"}))  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from kerasllm_widget import inspect
from kerasllm_widget.inspect._sources import backbone_of, tokenizer_of
from kerasllm_widget.inspect.pieces import piece
from kerasllm_widget.widgets import inspect_protocol as P
from kerasllm_widget.widgets.inspected_sequence import InspectedSequence

__all__ = ["LENS_TOP_K", "LensRequests", "lens_arrays", "lens_labels"]

LENS_TOP_K = 5  # alternatives per cell: what hovering a cell lists
KEPT_PASSES = 4  # computed lenses kept (a chat's last states, a text edited back and forth)


def lens_arrays(lens: inspect.LogitLens) -> dict[str, np.ndarray]:
    """The arrays a lens view draws from: probabilities and entropies in float16, ids and ranks
    in int32; ``target_*`` follow at every position the token that came next, and at the last
    one the model's own choice (``top_ids[-1, -1, 0]``).

    Example:
        >>> arrays = lens_arrays(inspect.logit_lens(model, ids))  # doctest: +SKIP
        >>> arrays["target_probs"].shape, arrays["target_probs"].dtype  # doctest: +SKIP
        ((30, 12), dtype('float16'))
    """
    if lens.target_prob is None or lens.final_rank is None or lens.final_prob is None:
        raise ValueError("lens has no target probabilities; compute it with inspect.logit_lens")
    choice = lens.top_ids[-1, -1, :1]
    return {
        "token_ids": lens.token_ids.astype(np.int32),
        "top_ids": lens.top_ids.astype(np.int32),
        "top_probs": lens.top_probs.astype(np.float16),
        "entropy": lens.entropy.astype(np.float16),
        "target_ids": np.concatenate([lens.token_ids[1:], choice]).astype(np.int32),
        "target_rank": np.concatenate([lens.target_rank, lens.final_rank[:, None]], 1).astype(
            np.int32
        ),
        "target_probs": np.concatenate([lens.target_prob, lens.final_prob[:, None]], 1).astype(
            np.float16
        ),
    }


def lens_labels(lens: inspect.LogitLens, tokenizer: Any) -> dict[str, str]:
    """The readable piece of every id the view shows (top ids and the sequence), each decoded
    once: ``{str(id): piece}``.

    Example:
        >>> lens_labels(lens, tokenizer)["9906"]  # doctest: +SKIP
        'Hello'
    """
    wanted = np.unique(np.concatenate([lens.top_ids.ravel(), lens.token_ids.ravel()]))
    return {str(int(i)): piece(tokenizer, int(i)) for i in wanted}


class LensRequests:
    """Answers ``lens.request``: computes the lens of the asked sequence once and keeps the
    answer, so that a view of a computed pass is only the sending of its bytes.

    Runs on the inspector service's worker thread. A request takes the sequence as it is when
    its turn comes, so requests queued behind a long pass while the conversation moved on all
    ask for the newest state, and the first of them computes it for the others.

    Args:
        model: returns the `Llama3CausalLM` (or None while it loads).
        sequence: ``sequence(text)`` -> the `InspectedSequence` (``None``: the widget's own).
        send: ``send(content, buffers)`` to every view (the ``lens.progress`` reports).
        top_k: alternatives per cell.

    Example:
        >>> requests.answer(request)[0]["kind"]  # doctest: +SKIP
        'lens.result'
    """

    def __init__(
        self,
        *,
        model: Callable[[], Any],
        sequence: Callable[[str | None], InspectedSequence],
        send: Callable[..., None],
        top_k: int = LENS_TOP_K,
    ) -> None:
        self._model = model
        self._sequence = sequence
        self._send = send
        self.top_k = top_k
        self._lock = threading.Lock()
        # sequence id -> (the lens, the answer's fields, its buffers)
        self._kept: OrderedDict[str, tuple[inspect.LogitLens, dict, list]] = OrderedDict()

    def answer(self, request: P.Request) -> tuple[dict, list | None]:
        """The ``lens.result`` of the request's sequence, or an ``inspect.error`` saying why not."""
        model = self._model()
        if model is None:
            return self._error(request, P.ERROR_NOT_READY, "the model is still loading")
        sequence = self._sequence(request.fields["text"])
        if len(sequence) == 0:
            return self._error(request, P.ERROR_NOT_READY, "there are no tokens to look at yet")
        kept = self._kept_for(sequence.sequence_id)
        if kept is None:
            kept = self._compute(model, sequence)
        _, fields, buffers = kept
        return P.envelope(P.LENS_RESULT, request.id, **fields), buffers

    def computed(self, sequence_id: str) -> inspect.LogitLens | None:
        """The lens of a sequence if a view already had it computed, else None.

        Example:
            >>> requests.computed(view.source.sequence(None).sequence_id)  # doctest: +SKIP
        """
        kept = self._kept_for(sequence_id)
        return None if kept is None else kept[0]

    def _kept_for(self, sequence_id: str):
        with self._lock:
            kept = self._kept.get(sequence_id)
            if kept is not None:
                self._kept.move_to_end(sequence_id)
            return kept

    def _compute(self, model: Any, sequence: InspectedSequence):
        num_layers = int(backbone_of(model).num_layers)
        # Not an answer (id ""): every view of the widget may show that a pass is running.
        self._send(
            P.envelope(P.LENS_PROGRESS, "", length=len(sequence), num_layers=num_layers), None
        )
        started = time.perf_counter()
        lens = inspect.logit_lens(model, sequence.ids, top_k=self.top_k)
        compute_s = time.perf_counter() - started
        headers, buffers = P.pack_arrays(lens_arrays(lens))
        fields = {
            "sequence_id": sequence.sequence_id,
            "pieces": sequence.pieces,
            "roles": sequence.roles,
            "num_layers": num_layers,
            "top_k": self.top_k,
            "compute_s": compute_s,
            "labels": lens_labels(lens, tokenizer_of(model)),
            "arrays": headers,
        }
        kept = (lens, fields, buffers)
        with self._lock:
            self._kept[sequence.sequence_id] = kept
            while len(self._kept) > KEPT_PASSES:
                self._kept.popitem(last=False)
        return kept

    def _error(self, request: P.Request, code: str, message: str) -> tuple[dict, None]:
        return (
            P.envelope(
                P.INSPECT_ERROR, request.id, request_kind=request.kind, code=code, message=message
            ),
            None,
        )
