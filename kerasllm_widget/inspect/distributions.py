"""Next-token distributions: what the model weighed at a position, and how sure it was."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kerasllm_widget.inspect._compiled import InspectionPass
from kerasllm_widget.inspect._sources import backbone_of, text_ids, tokenizer_of
from kerasllm_widget.inspect.pieces import pieces as readable_pieces


def entropy(values, axis: int = -1, from_logits: bool = False) -> np.ndarray:
    """Shannon entropy in nats of probabilities (or of ``softmax(logits)`` with ``from_logits``).

    Example:
        >>> float(entropy(np.array([0.5, 0.5])).round(4))
        0.6931
    """
    values = np.asarray(values, dtype=np.float64)
    if from_logits:
        shifted = values - values.max(axis=axis, keepdims=True)
        log_z = np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        log_p = shifted - log_z
        return -(np.exp(log_p) * log_p).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(values > 0, values * np.log(values), 0.0)
    return -terms.sum(axis=axis)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, probs.shape[-1])
    top = np.argpartition(-probs, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(probs, top, axis=-1), axis=-1, kind="stable")
    ids = np.take_along_axis(top, order, axis=-1)
    return ids.astype(np.int64), np.take_along_axis(probs, ids, axis=-1)


@dataclass
class NextTokenDistribution:
    """The model's distribution over the token that follows a sequence, cut to its top ``k``."""

    token_ids: np.ndarray  # [k], most likely first
    probs: np.ndarray  # [k]
    pieces: list[str]
    entropy: float  # nats, of the whole distribution
    context_length: int  # how many tokens were read

    def to_dict(self) -> dict:
        """Plain data for a widget message."""
        return {
            "token_ids": [int(i) for i in self.token_ids],
            "probs": [float(p) for p in self.probs],
            "pieces": list(self.pieces),
            "entropy": float(self.entropy),
            "context_length": int(self.context_length),
        }


def _as_ids(model, inputs, add_start_token: bool) -> np.ndarray:
    if isinstance(inputs, str):
        return text_ids(model, inputs, add_start_token)
    return np.asarray(inputs, dtype=np.int32).reshape(-1)


def next_token(
    model,
    inputs,
    top_k: int = 10,
    temperature: float = 1.0,
    add_start_token: bool = True,
) -> NextTokenDistribution:
    """What comes next after ``inputs`` (a string, or a sequence of token ids), as the model sees it.

    ``temperature`` divides the logits before the softmax, as the sampler does.

    Example:
        >>> dist = next_token(model, "The capital of France is", top_k=3)  # doctest: +SKIP
        >>> dist.pieces[0], round(float(dist.probs[0]), 2)  # doctest: +SKIP
        ('␣Paris', 0.71)
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive (use the top entry for greedy decoding)")
    ids = _as_ids(model, inputs, add_start_token)
    if ids.size == 0:
        raise ValueError("next_token needs at least one token of context")
    run = InspectionPass(backbone_of(model), ids[None], np.ones((1, ids.size), bool))
    logits = run.logits(ids.size - 1, ids.size)[0, 0] / temperature
    probs = _softmax(logits)
    top_ids, top_probs = _top_k(probs, top_k)
    try:
        labels = readable_pieces(tokenizer_of(model), top_ids)
    except TypeError:  # a bare backbone has no tokenizer: label with ids
        labels = [str(int(i)) for i in top_ids]
    return NextTokenDistribution(
        top_ids, top_probs.astype(np.float32), labels, float(entropy(probs)), int(ids.size)
    )


@dataclass
class SequenceScores:
    """How probable each token of a sequence was, given the tokens before it.

    Position ``t`` describes the distribution that predicted token ``t``; position 0 has none (NaN).
    """

    token_ids: np.ndarray  # [T]
    probs: np.ndarray  # [T] probability of the actual token
    entropy: np.ndarray  # [T] nats
    top_ids: np.ndarray  # [T, k]
    top_probs: np.ndarray  # [T, k]
    pieces: list[str] = field(default_factory=list)

    @property
    def logprobs(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.probs)


def score(model, token_ids, top_k: int = 5, chunk: int = 256) -> SequenceScores:
    """Scores a whole sequence in one pass (teacher forcing): each token's probability, the
    entropy of the distribution it was drawn from, and the top alternatives.

    Example:
        >>> s = score(model, ids)  # doctest: +SKIP
        >>> s.probs.shape == s.entropy.shape == ids.shape  # doctest: +SKIP
        True
    """
    ids = np.asarray(token_ids, dtype=np.int32).reshape(-1)
    length = ids.size
    probs = np.full(length, np.nan, np.float32)
    entropies = np.full(length, np.nan, np.float32)
    top_ids = np.full((length, top_k), -1, np.int64)
    top_probs = np.zeros((length, top_k), np.float32)
    if length > 1:
        run = InspectionPass(backbone_of(model), ids[None], np.ones((1, length), bool))
        # Chunks over positions: T x V float logits at once can take gigabytes.
        for start in range(0, length - 1, chunk):
            stop = min(start + chunk, length - 1)
            distribution = _softmax(run.logits(start, stop)[0])
            targets = ids[start + 1 : stop + 1]
            probs[start + 1 : stop + 1] = distribution[np.arange(stop - start), targets]
            entropies[start + 1 : stop + 1] = entropy(distribution)
            k_ids, k_probs = _top_k(distribution, top_k)
            top_ids[start + 1 : stop + 1, : k_ids.shape[1]] = k_ids
            top_probs[start + 1 : stop + 1, : k_probs.shape[1]] = k_probs
    try:
        labels = readable_pieces(tokenizer_of(model), ids)
    except TypeError:
        labels = [str(int(i)) for i in ids]
    return SequenceScores(ids, probs, entropies, top_ids, top_probs, labels)
