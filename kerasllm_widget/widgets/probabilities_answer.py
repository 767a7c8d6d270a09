"""The Probabilities tab's answer: the conversation scored token by token, as binary arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasllm_widget import inspect
from kerasllm_widget.inspect._sources import tokenizer_of
from kerasllm_widget.inspect.pieces import piece
from kerasllm_widget.widgets import inspect_protocol as P
from kerasllm_widget.widgets.inspected_sequence import InspectedSequence

PROBABILITIES_TOP_K = 5


def probabilities_answer(model: Any, sequence: InspectedSequence, request_id: str):
    """``(envelope, buffers)`` of ``probabilities.result`` for ``sequence``: each token's
    probability and entropy, and the top `PROBABILITIES_TOP_K` alternatives, with their texts.

    Example:
        >>> content, buffers = probabilities_answer(model, sequence, "r1")  # doctest: +SKIP
        >>> content["kind"]  # doctest: +SKIP
        'probabilities.result'
    """
    scores = inspect.score(model, sequence.ids, top_k=PROBABILITIES_TOP_K)
    tokenizer = tokenizer_of(model)
    wanted = {int(i) for i in np.unique(scores.top_ids) if i >= 0}
    labels = {str(i): piece(tokenizer, i) for i in sorted(wanted)}
    headers, buffers = P.pack_arrays(
        {
            "token_ids": sequence.ids.astype(np.int32),
            "probs": np.nan_to_num(scores.probs, nan=-1.0).astype(np.float32),
            "entropy": np.nan_to_num(scores.entropy, nan=-1.0).astype(np.float32),
            "top_ids": scores.top_ids.astype(np.int32),
            "top_probs": scores.top_probs.astype(np.float32),
        }
    )
    envelope = P.envelope(
        P.PROBABILITIES_RESULT,
        request_id,
        sequence_id=sequence.sequence_id,
        pieces=sequence.pieces,
        roles=sequence.roles,
        labels=labels,
        arrays=headers,
    )
    return envelope, buffers
