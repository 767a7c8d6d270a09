"""Text in, events or text out: what `Llama3CausalLM.stream`/`generate` and `ChatState` call.

`stream_ids` turns the engine's token chunks into `TokenEvent`s (text deltas that are UTF-8
safe and hold back possible stop strings, log-probabilities, top alternatives) and one final
`DoneEvent`; `stream` adds tokenization on top (keras_hub's batched `generate` is in
`batch_generate`).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from kerasllm_widget.generation import settings
from kerasllm_widget.generation.detokenizer import IncrementalDetokenizer
from kerasllm_widget.generation.engine_outputs import RequestTimings
from kerasllm_widget.generation.events import Alternative, DoneEvent, TokenEvent
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.samplers import Sampler, get_sampler
from kerasllm_widget.generation.steering import steering_edits
from kerasllm_widget.generation.stopping import (
    AUTO,
    StopStringMatcher,
    requested_stop_token_ids,
    stop_token_ids_of,
)

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "make_sampler", "prompt_token_ids", "stream", "stream_ids"]

DEFAULT_MAX_NEW_TOKENS = 256


def make_sampler(
    base: str | Sampler | None = None,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
) -> Sampler:
    """A sampler from a name or object, with any knob overridden.

    Example:
        >>> make_sampler("greedy", temperature=0.7, top_p=0.9).top_p
        0.9
    """
    sampler = get_sampler(base)
    return sampler.replace(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )


class _PieceNames:
    """Readable text of single tokens for the alternatives, decoded once per id."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = (
                self.tokenizer.detokenize([token_id])
                if self.tokenizer is not None
                else str(token_id)
            )
            self._cache[token_id] = text
        return text


# Weak keys: a reloaded model's tokenizer (and its vocabulary) must not outlive the model.
_piece_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pieces(tokenizer) -> _PieceNames:
    if tokenizer is None:
        return _PieceNames(None)
    names = _piece_names.get(tokenizer)
    if names is None:
        names = _piece_names[tokenizer] = _PieceNames(weakref.proxy(tokenizer))
    return names


def stream_ids(
    model,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    sampler: str | Sampler | None = None,
    stop_token_ids: Sequence[int] | None = None,
    stop_strings: Sequence[str] | None = None,
    top_k_alternatives: int = 0,
    cancel_event: threading.Event | None = None,
    seed: int | None = None,
    started: float | None = None,
    min_cache_length: int = 0,
    ignore_eos: bool = False,
    engine=None,
    steering: Mapping[int, Any] | None = None,
) -> Iterator[TokenEvent | DoneEvent]:
    """Events for one prompt given as token ids (the whole prompt, special tokens included).

    ``ignore_eos``: do not stop on the checkpoint's stop tokens (benchmarks that need an exact
    number of tokens). ``steering``: ``{layer: vector}`` added to the residual after that
    decoder layer at every position (`kerasllm_widget.generation.steering`). ``engine`` defaults to the model's (`engine_for`); anything with the
    same ``generate_tokens``/``sampler`` will do.

    Example:
        >>> for event in stream_ids(model, [1, 2, 3], max_new_tokens=4):  # doctest: +SKIP
        ...     print(event)
    """
    tokenizer = model.tokenizer
    engine = engine or engine_for(model)
    sampler = get_sampler(sampler) if sampler is not None else engine.sampler
    vocabulary = int(model.backbone.vocabulary_size)
    prompt_ids = settings.check_token_ids(prompt_ids, vocabulary, "prompt token ids")
    if not prompt_ids:
        raise ValueError("The prompt has no tokens; give the model some text or token ids.")
    max_new_tokens = settings.check_max_new_tokens(max_new_tokens)
    stop_strings = settings.check_stop_strings(stop_strings)
    seed = settings.check_seed(seed)
    extra_stops = settings.check_token_ids(stop_token_ids or [], vocabulary, "stop_token_ids")
    top_k_alternatives = settings.check_count(
        top_k_alternatives or 0, "top_k_alternatives", 0, vocabulary
    )
    stops = sorted(set(extra_stops)) if ignore_eos else stop_token_ids_of(tokenizer, extra_stops)
    edits = steering_edits(model, steering)
    stop_set = set(stops)
    timings = RequestTimings(started=started or time.perf_counter())
    detokenizer = IncrementalDetokenizer(tokenizer, context_ids=prompt_ids) if tokenizer else None
    matcher = StopStringMatcher(stop_strings)
    names = _pieces(tokenizer)
    reply_ids: list[int] = []
    reason = "max_new_tokens"
    index = 0
    context = int(model.backbone.max_sequence_length)
    if len(prompt_ids) >= context:
        raise ValueError(
            f"The prompt has {len(prompt_ids)} tokens; the model's context is {context}. Shorten it."
        )
    # Prompt and reply together never exceed the context.
    budget = min(max_new_tokens, context - len(prompt_ids))
    chunks = engine.generate_tokens(
        [prompt_ids],
        max_new_tokens=budget,
        sampler=sampler,
        stop_token_ids=stops,
        num_alternatives=top_k_alternatives,
        cancel_event=cancel_event,
        seed=seed,
        timings=timings,
        min_cache_length=min_cache_length,
        **({"edits": edits} if edits else {}),
    )
    # An event whose token left text held back (half a character, or the start of what may be
    # a stop string) waits for the next token, so that whatever the end of the stream releases
    # can still go into it: the deltas always join up to the reply.
    pending: TokenEvent | None = None
    utf8 = _Utf8Tracker(tokenizer)
    try:
        for chunk in chunks:
            finished = False
            for step in range(chunk.tokens.shape[1]):
                token_id = int(chunk.tokens[0, step])
                if token_id in stop_set:
                    reason, finished = "stop_token", True
                    break
                reply_ids.append(token_id)
                text = matcher.push(detokenizer.push(token_id) if detokenizer else "")
                alternatives = [
                    Alternative(int(i), names(int(i)), math.exp(float(lp)))
                    for i, lp in zip(
                        chunk.alternative_ids[0, step],
                        chunk.alternative_logprobs[0, step],
                        strict=True,
                    )
                ]
                event = TokenEvent(
                    index, token_id, text, float(chunk.logprobs[0, step]), alternatives
                )
                index += 1
                if pending is not None:
                    yield pending
                    pending = None
                if matcher.stopped:
                    pending, reason, finished = event, "stop_string", True
                    break
                if utf8.push(token_id) or matcher.holding:
                    pending = event
                else:
                    yield event
            if finished:
                break
        else:
            if _cancelled(cancel_event):
                reason = "cancelled"
            elif index < max_new_tokens and len(prompt_ids) + index >= context:
                reason = "context_full"
    finally:
        chunks.close()
    if not matcher.stopped and detokenizer is not None:
        tail = matcher.push(detokenizer.flush()) + matcher.flush()
        if pending is not None:
            pending.text += tail
    if pending is not None:
        yield pending
    notice = ""
    if reason == "context_full":
        notice = f"The reply stopped at the model's context length ({context} tokens)."
    yield DoneEvent(
        stop_reason=reason,
        reply=matcher.text,
        token_ids=reply_ids,
        prompt_tokens=timings.prompt_tokens,
        generated_tokens=len(reply_ids),
        prefilled_tokens=timings.prefilled_tokens,
        time_to_first_token_s=timings.time_to_first_token_s,
        prefill_tokens_per_s=timings.prefill_tokens_per_s,
        decode_tokens_per_s=timings.decode_tokens_per_s,
        notice=notice,
    )


class _Utf8Tracker:
    """Says whether the bytes of the tokens so far end in the middle of a UTF-8 character."""

    def __init__(self, tokenizer):
        self._token_bytes = getattr(tokenizer, "token_bytes", None)
        self._partial = b""

    def push(self, token_id: int) -> bool:
        if self._token_bytes is None:
            return False
        try:
            piece = self._token_bytes(token_id)
        except ValueError:  # an embedding row past the tokenizer's vocabulary: no text
            piece = b""
        data = self._partial + piece
        try:
            data.decode("utf-8")
            self._partial = b""
        except UnicodeDecodeError as error:
            # Only a truncated character at the end is "incomplete"; invalid bytes are final.
            self._partial = data[error.start :] if error.reason == "unexpected end of data" else b""
            self._partial = self._partial[-4:]
        return bool(self._partial)


def _cancelled(event: threading.Event | None) -> bool:
    return event is not None and event.is_set()


def prompt_token_ids(model, prompt: Any) -> list[int]:
    """Token ids of one prompt: a string or a conversation (through the preprocessor, which adds
    the start token the checkpoint wants) or ids as they are."""
    vocabulary = int(model.backbone.vocabulary_size)
    if isinstance(prompt, np.ndarray) and prompt.dtype.kind in "iu":
        return settings.check_token_ids(prompt, vocabulary, "prompt token ids")
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (int, np.integer)):
        return settings.check_token_ids(prompt, vocabulary, "prompt token ids")
    if isinstance(prompt, (list, tuple)) and not prompt:
        raise ValueError("The prompt is an empty list; give the model text or token ids.")
    if model.preprocessor is None:
        raise ValueError("This model has no preprocessor: pass token ids instead of text.")
    if isinstance(prompt, str) and not prompt:
        raise ValueError("The prompt is empty; give the model some text to continue.")
    ids = np.asarray(model.preprocessor.generate_preprocess(prompt)["token_ids"])
    return ids.reshape(-1).tolist()


def stream(
    model,
    prompt: Any,
    *,
    max_new_tokens: int | None = None,
    sampler: str | Sampler | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    stop_token_ids: Any = AUTO,
    stop_strings: Sequence[str] | None = None,
    top_k_alternatives: int = 0,
    cancel_event: threading.Event | None = None,
    ignore_eos: bool = False,
    steering: Mapping[int, Any] | None = None,
) -> Iterator[TokenEvent | DoneEvent]:
    """Streams a reply to ``prompt`` (text, a conversation, or token ids) as events: every
    event's ``text`` is the new text (the final `DoneEvent`'s is empty; its ``reply`` is the
    whole reply). ``stop_token_ids`` as in keras_hub's ``generate``: ``"auto"`` (the
    checkpoint's), ``None`` (none) or the ids to stop on; ``ignore_eos`` drops the checkpoint's.

    Example:
        >>> text = "".join(e.text for e in stream(model, "Hi!"))  # doctest: +SKIP
    """
    started = time.perf_counter()
    base = sampler if sampler is not None else engine_for(model).sampler
    chosen = make_sampler(
        base,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
    )
    yield from stream_ids(
        model,
        prompt_token_ids(model, prompt),
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS
        if max_new_tokens is None
        else settings.check_max_new_tokens(max_new_tokens),
        sampler=chosen,
        stop_token_ids=requested_stop_token_ids(
            model.tokenizer,
            None if ignore_eos and stop_token_ids == AUTO else stop_token_ids,
            int(model.backbone.vocabulary_size),
        ),
        stop_strings=stop_strings,
        top_k_alternatives=top_k_alternatives,
        cancel_event=cancel_event,
        seed=seed,
        started=started,
        ignore_eos=True,  # the resolved ids already hold the checkpoint's where asked for
        steering=steering,
    )
