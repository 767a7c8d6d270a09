"""keras_hub's ``generate``: strings, lists of strings or preprocessed arrays in, the same out.

The signature and meanings are keras_hub's (``CausalLM.generate(inputs, max_length=None,
stop_token_ids="auto", strip_prompt=False)``), so that code written for keras_hub runs
unchanged: ``max_length`` counts the prompt too and defaults to the preprocessor's
``sequence_length``; ``stop_token_ids`` is ``"auto"``, ``None`` or the ids to stop on. One row
streams through `stream_ids` (UTF-8 safe text, stop strings); several rows decode together.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kerasllm_widget.generation import settings
from kerasllm_widget.generation.api import (
    DEFAULT_MAX_NEW_TOKENS,
    make_sampler,
    prompt_token_ids,
    stream_ids,
)
from kerasllm_widget.generation.events import DoneEvent
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.samplers import Sampler
from kerasllm_widget.generation.steering import steering_edits
from kerasllm_widget.generation.stopping import AUTO, requested_stop_token_ids

__all__ = ["generate"]


def _batch_rows(model, inputs: Any) -> tuple[list[list[int]], str, int]:
    """Prompt rows, the input kind ("string", "strings" or "preprocessed") and, for
    preprocessed inputs, their padded width (keras_hub fills the padding; 0 otherwise)."""
    if isinstance(inputs, Mapping):
        if "token_ids" not in inputs:
            raise ValueError(
                f"generate() got a dict with keys {sorted(map(str, inputs))}; preprocessed "
                "inputs need 'token_ids' (and optionally 'padding_mask'), as the preprocessor "
                "makes them: model.preprocessor.generate_preprocess(text)."
            )
        token_ids = np.atleast_2d(np.asarray(inputs["token_ids"]))
        mask = inputs.get("padding_mask")
        mask = (
            np.ones(token_ids.shape, bool)
            if mask is None
            else np.atleast_2d(np.asarray(mask, bool))
        )
        rows = [row[m].tolist() for row, m in zip(token_ids, mask, strict=True)]
        return rows, "preprocessed", int(token_ids.shape[1])
    if isinstance(inputs, str):
        return [prompt_token_ids(model, inputs)], "string", 0
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "US":
        inputs = inputs.tolist()
    if isinstance(inputs, (list, tuple)) and not inputs:
        raise ValueError("generate() got an empty list: pass a string or a list of strings.")
    if isinstance(inputs, (list, tuple)) and all(isinstance(x, str) for x in inputs):
        return [prompt_token_ids(model, x) for x in inputs], "strings", 0
    if isinstance(inputs, (list, tuple)) and isinstance(inputs[0], (int, np.integer)):
        return [prompt_token_ids(model, inputs)], "string", 0  # one prompt as token ids
    if isinstance(inputs, (list, tuple)) and isinstance(inputs[0], Mapping):
        return [prompt_token_ids(model, inputs)], "string", 0  # one conversation
    raise TypeError(
        "generate() takes a string, a list of strings, or {'token_ids', 'padding_mask'}; "
        f"got {type(inputs).__name__}."
    )


def _default_max_length(model, kind: str, width: int) -> int | None:
    """keras_hub's ``max_length=None``: the padded width of preprocessed inputs, else the
    preprocessor's ``sequence_length``; None (``DEFAULT_MAX_NEW_TOKENS`` new tokens) without one."""
    if kind == "preprocessed":
        return width
    preprocessor = model.preprocessor
    return None if preprocessor is None else int(preprocessor.sequence_length)


def generate(
    model,
    inputs: Any,
    max_length: int | None = None,
    stop_token_ids: Any = AUTO,
    strip_prompt: bool = False,
    *,
    max_new_tokens: int | None = None,
    sampler: str | Sampler | None = None,
    stop_strings: Sequence[str] | None = None,
    seed: int | None = None,
    cancel_event: threading.Event | None = None,
    steering: Mapping[int, Any] | None = None,
    **sampling: Any,
) -> Any:
    """keras_hub's ``generate``: the prompt followed by its continuation, for a string, a list of
    strings (batched) or preprocessed ``{"token_ids", "padding_mask"}`` (returned in that form,
    the stop token kept and masked in, as keras_hub does).

    ``max_length`` counts the prompt too (default: the preprocessor's ``sequence_length``, or the
    padded width of preprocessed inputs); ``max_new_tokens`` (keyword only) counts only new
    tokens and, given alone, replaces ``max_length``. ``stop_token_ids``: ``"auto"`` (the
    checkpoint's), ``None`` (none) or the ids to stop on. ``strip_prompt=True`` returns only the
    continuation.

    Example:
        >>> generate(model, "The capital of France is", 16)  # doctest: +SKIP
        'The capital of France is Paris...'
    """
    rows, kind, width = _batch_rows(model, inputs)
    vocabulary = int(model.backbone.vocabulary_size)
    rows = [settings.check_token_ids(r, vocabulary, "prompt token ids") for r in rows]
    if any(not r for r in rows):
        raise ValueError("A prompt has no tokens; give the model some text to continue.")
    if max_new_tokens is not None:
        max_new_tokens = settings.check_max_new_tokens(max_new_tokens)
    truncate = max_length is not None  # an explicit max_length cuts a longer prompt, as keras_hub
    if max_length is not None:
        max_length = settings.check_max_new_tokens(max_length, "max_length")
    elif max_new_tokens is None:
        max_length = _default_max_length(model, kind, width)
    stop_strings = settings.check_stop_strings(stop_strings)
    seed = settings.check_seed(seed)
    tokenizer = model.tokenizer
    stops = requested_stop_token_ids(tokenizer, stop_token_ids, vocabulary)
    if max_length is not None:
        if truncate:
            rows = [r[: max(1, int(max_length) - 1)] for r in rows]
        budgets = [max(1, int(max_length) - len(r)) for r in rows]
    else:
        budgets = [DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens] * len(rows)
    if max_new_tokens is not None:
        budgets = [min(b, int(max_new_tokens)) for b in budgets]
    base = sampler if sampler is not None else engine_for(model).sampler
    chosen = make_sampler(base, **sampling)
    if len(rows) == 1 and kind != "preprocessed":
        done = None
        for event in stream_ids(
            model,
            rows[0],
            max_new_tokens=max(1, budgets[0]),
            sampler=chosen,
            stop_token_ids=stops,
            stop_strings=stop_strings,
            cancel_event=cancel_event,
            seed=seed,
            steering=steering,
            ignore_eos=True,  # `stops` already holds the checkpoint's ids where "auto" asks for them
        ):
            if isinstance(event, DoneEvent):
                done = event
        texts = [done.reply]
    else:
        replies = _generate_rows(
            model, rows, budgets, chosen, stops, seed, cancel_event, steering, kind
        )
        if kind == "preprocessed":
            return _as_preprocessed(rows, replies, width)
        texts = [tokenizer.detokenize(r) if tokenizer else "" for r in replies]
        if stop_strings:
            texts = [_cut_at_stop_string(t, stop_strings) for t in texts]
    if not strip_prompt:
        prompts = [_prompt_text(model, r) for r in rows]
        texts = [p + t for p, t in zip(prompts, texts, strict=True)]
    return texts[0] if kind == "string" else texts


def _generate_rows(
    model, rows, budgets, sampler, stops, seed, cancel_event, steering, kind
) -> list[list[int]]:
    """Every row decoded together; each reply cut at its first stop token (kept for
    preprocessed outputs, as keras_hub keeps it) and at its own budget."""
    engine = engine_for(model)
    edits = steering_edits(model, steering)
    collected: list[list[int]] = [[] for _ in rows]
    for chunk in engine.generate_tokens(
        rows,
        max_new_tokens=max(1, max(budgets)),
        sampler=sampler,
        stop_token_ids=stops,
        cancel_event=cancel_event,
        seed=seed,
        **({"edits": edits} if edits else {}),
    ):
        for row, tokens in enumerate(chunk.tokens.tolist()):
            collected[row].extend(tokens)
    stop_set = set(stops)
    keep_stop = 1 if kind == "preprocessed" else 0
    replies = []
    for row, tokens in enumerate(collected):
        cut = next((i + keep_stop for i, t in enumerate(tokens) if t in stop_set), len(tokens))
        replies.append(tokens[: min(cut, max(1, budgets[row]))])
    return replies


def _as_preprocessed(
    rows: list[list[int]], replies: list[list[int]], width: int
) -> dict[str, np.ndarray]:
    """Prompt and reply per row, left-aligned in arrays at least as wide as the input: the
    padding mask is True over them and False after (keras_hub's output form)."""
    full = [r + g for r, g in zip(rows, replies, strict=True)]
    width = max(width, *(len(f) for f in full))
    token_ids = np.zeros((len(full), width), np.int32)
    padding_mask = np.zeros((len(full), width), bool)
    for i, f in enumerate(full):
        token_ids[i, : len(f)] = f
        padding_mask[i, : len(f)] = True
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _prompt_text(model, ids: list[int]) -> str:
    """The prompt as keras_hub's ``generate`` shows it: the start token the preprocessor added
    is dropped."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        return ""
    added = getattr(tokenizer, "add_bos", True) and ids and ids[0] == tokenizer.start_token_id
    return tokenizer.detokenize(ids[1:] if added else ids)


def _cut_at_stop_string(text: str, stop_strings: Sequence[str]) -> str:
    found = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return text[: min(found)] if found else text
