"""Steering vectors and model comparison, built on the hook points (`inspect.run_with_cache`).

`steering_vector` finds a direction in the residual stream from prompts for and against a
concept; `generate(..., steering={layer: strength * vector})` adds it back while the model
writes. `compare_models` scores one token sequence under two models (two presets, or one model
before and after fine-tuning) token by token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasllm_widget.inspect.hooks import run_with_cache, run_with_hooks

__all__ = ["ModelComparison", "compare_logits", "compare_models", "steering_vector"]


def _prompt_ids(model, prompt: Any, argument: str) -> list[int]:
    if isinstance(prompt, str):
        preprocessor = getattr(model, "preprocessor", None)
        if preprocessor is None:
            raise ValueError(f"{argument}: this model has no preprocessor; pass token-id lists.")
        return [int(i) for i in np.asarray(preprocessor.generate_preprocess(prompt)["token_ids"])]
    ids = list(np.asarray(prompt).reshape(-1))
    if not ids:
        raise ValueError(f"{argument} holds an empty prompt: give text or token ids.")
    return ids


def steering_vector(model, positive: Sequence[Any], negative: Sequence[Any], layer: int):
    """The mean over ``positive`` prompts of the residual after decoder layer ``layer`` at each
    prompt's last position, minus the same mean over ``negative`` (float32 ``[hidden]``).
    Prompts are strings (through the preprocessor, start token included) or token-id lists
    (used as given).

    Example:
        >>> v = steering_vector(model, ["I love this!"], ["I hate this."], layer=6)  # doctest: +SKIP
        >>> model.generate("The movie was", steering={6: 4.0 * v})  # doctest: +SKIP
    """
    backbone = getattr(model, "backbone", model)
    layers = int(backbone.num_layers)
    if (
        isinstance(layer, bool)
        or not isinstance(layer, (int, np.integer))
        or not (0 <= layer < layers)
    ):
        raise ValueError(f"layer={layer!r} is not a decoder layer: use 0..{layers - 1}.")
    name = f"layers.{int(layer)}.residual_out"

    def mean_state(prompts: Sequence[Any], argument: str) -> np.ndarray:
        if isinstance(prompts, str) or not len(prompts):
            raise ValueError(f"{argument} must be a non-empty list of prompts.")
        states = []
        for prompt in prompts:
            ids = _prompt_ids(model, prompt, argument)
            _, cache = run_with_cache(model, ids, names=[name])
            states.append(cache[name][0, -1].astype(np.float64))
        return np.mean(states, axis=0)

    return (mean_state(positive, "positive") - mean_state(negative, "negative")).astype(np.float32)


@dataclasses.dataclass
class ModelComparison:
    """One sequence scored under two models: ``logprobs_a``/``logprobs_b`` ``[T-1]`` (the
    log-probability of each actual next token), ``kl`` ``[T-1]`` (KL(a || b) of the next-token
    distributions, nats) and each model's ``top_ids``/``top_probs`` ``[T, k]``."""

    token_ids: np.ndarray
    logprobs_a: np.ndarray
    logprobs_b: np.ndarray
    kl: np.ndarray
    top_ids_a: np.ndarray
    top_probs_a: np.ndarray
    top_ids_b: np.ndarray
    top_probs_b: np.ndarray


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k={top_k!r}: use a whole number >= 1.")


def compare_models(model_a, model_b, token_ids, top_k: int = 5) -> ModelComparison:
    """Scores ``token_ids`` (one sequence) under both models.

    Example:
        >>> diff = compare_models(before, after, ids)  # doctest: +SKIP
        >>> int(diff.kl.argmax())  # where fine-tuning changed the model most  # doctest: +SKIP
    """
    ids = np.asarray(token_ids).reshape(-1)
    if ids.size < 2:
        raise ValueError(
            "token_ids needs at least two tokens: each is scored given the ones before."
        )
    vocab_a = int(getattr(model_a, "backbone", model_a).vocabulary_size)
    vocab_b = int(getattr(model_b, "backbone", model_b).vocabulary_size)
    if vocab_a != vocab_b:
        raise ValueError(
            f"The models have different vocabularies ({vocab_a} and {vocab_b} tokens): compare "
            "models that share a tokenizer."
        )
    _check_top_k(top_k)  # before two forward passes
    log_a = run_with_hooks(model_a, ids)[0]
    log_b = run_with_hooks(model_b, ids)[0]
    return compare_logits(log_a, log_b, ids, top_k=top_k)


def compare_logits(logits_a, logits_b, token_ids, top_k: int = 5) -> ModelComparison:
    """`compare_models` from the two models' logits ``[T, vocabulary]`` of ``token_ids``
    (for scores computed another way, e.g. one model under two sets of weights).

    Example:
        >>> diff = compare_logits(logits_start, logits_now, ids)  # doctest: +SKIP
    """
    ids = np.asarray(token_ids).reshape(-1)
    _check_top_k(top_k)
    log_a = _log_softmax(np.asarray(logits_a))
    log_b = _log_softmax(np.asarray(logits_b))
    if log_a.shape != log_b.shape or log_a.shape[0] != ids.size:
        raise ValueError(
            f"logits_a {log_a.shape} and logits_b {log_b.shape} must both be [{ids.size}, vocabulary]."
        )
    steps = np.arange(ids.size - 1)
    following = ids[1:].astype(np.int64)
    kl = (np.exp(log_a[:-1]) * (log_a[:-1] - log_b[:-1])).sum(-1)
    k = min(int(top_k), log_a.shape[-1])

    def top(log_probs):
        order = np.argsort(-log_probs, axis=-1, kind="stable")[:, :k]
        return order.astype(np.int32), np.exp(np.take_along_axis(log_probs, order, -1)).astype(
            np.float32
        )

    top_ids_a, top_probs_a = top(log_a)
    top_ids_b, top_probs_b = top(log_b)
    return ModelComparison(
        token_ids=ids.astype(np.int32),
        logprobs_a=log_a[steps, following].astype(np.float32),
        logprobs_b=log_b[steps, following].astype(np.float32),
        kl=np.maximum(kl, 0.0).astype(np.float32),
        top_ids_a=top_ids_a,
        top_probs_a=top_probs_a,
        top_ids_b=top_ids_b,
        top_probs_b=top_probs_b,
    )
