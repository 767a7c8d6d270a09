"""Token generation on a static key/value cache: a jitted prefill and a jitted k-token decode.

The shape of the work, gpt-fast style:

- `prefill` runs the model once over the real prompt (padded up to a power-of-two bucket, so
  every prompt length inside a bucket reuses one compiled program), fills the cache and picks
  the first token.
- `decode_one_token` feeds one token per row and picks the next; `decode_n_tokens` runs it up to
  ``k`` times inside one ``lax.while_loop``, stopping early when every row has hit a stop token,
  so that dispatch costs are paid once per chunk while tokens still stream chunk by chunk.
- The cache is donated to each call and handed back, so it is updated in place. After a
  request, the engine keeps the cache with the token ids it holds: the next single-row request
  that starts with the same tokens (the next turn of a chat) only prefills what is new.

The model's weights are arguments of the compiled functions (read through a Keras
`StatelessScope`), never constants baked into the program, and Keras' layer machinery only runs
while tracing. The sampler's knobs are traced too: a new temperature does not recompile.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import jax
import numpy as np

from kerasllm_widget.distribution import place_batch
from kerasllm_widget.generation.ahead_of_time import AheadOfTime, register_engine
from kerasllm_widget.generation.buckets import (
    CONTINUATION_CHUNK,
    MAX_PREFILL_CHUNK,
    decode_call_tokens,
    next_power_of_two,
    prefill_chunks,
    prompt_bucket,
    stop_slots,
)
from kerasllm_widget.generation.compilation import (
    decode_compiler_options,
    enable_compilation_cache,
)
from kerasllm_widget.generation.engine_outputs import RequestTimings, StepOutputs
from kerasllm_widget.generation.fused_weights import derive_in_scope, fusion_plan
from kerasllm_widget.generation.kept_cache import CacheRecord, CacheStore, edits_signature
from kerasllm_widget.generation.programs import (
    DecodeState,
    decode_n_tokens,
    prefill,
    prompt_arrays,
)
from kerasllm_widget.generation.samplers import Sampler, SamplerPlan
from kerasllm_widget.models.llama3_forward import EditSet

# Names other modules import from here (the engine's public vocabulary).
__all__ = [
    "CONTINUATION_CHUNK",
    "MAX_PREFILL_CHUNK",
    "DecodeState",
    "GenerationEngine",
    "RequestTimings",
    "StepOutputs",
    "decode_call_tokens",
    "enable_compilation_cache",
    "next_power_of_two",
    "prefill_chunks",
    "prompt_bucket",
    "stop_slots",
]


class GenerationEngine(AheadOfTime):
    """Compiled prefill/decode programs and a reusable cache for one model.

    Get one with `engine_for(model)`; `Llama3CausalLM.stream`/`generate` and `ChatState` use it.
    `trace_counts` says how many programs were compiled (``{"prefill": n, "decode": m}``).

    Example:
        >>> engine = engine_for(model)  # doctest: +SKIP
        >>> for outputs in engine.generate_tokens([[1, 2, 3]], max_new_tokens=8):  # doctest: +SKIP
        ...     print(outputs.tokens)
    """

    def __init__(self, model, chunk_size: int | None = None, cache_dtype=None):
        enable_compilation_cache()
        # A weak proxy: the registry (`engine_for`) maps the model to its engine, so a strong
        # reference here (and in the compiled programs' partials) would keep every model that
        # ever generated alive (~880 MB per SmolLM2 reload). The engine lives as long as the model.
        self.model = model if isinstance(model, weakref.ProxyTypes) else weakref.proxy(model)
        self._model_ref = None if isinstance(model, weakref.ProxyTypes) else weakref.ref(model)
        self.trace_counts: Counter = Counter()
        on_accelerator = jax.default_backend() != "cpu"
        # The most tokens per decode call (the compiled chunk): on an accelerator dispatch is the
        # cost to amortise. Each call runs fewer when steps are slow (`decode_call_tokens`).
        self.chunk_size = chunk_size or (64 if on_accelerator else 16)
        self.cache_dtype = cache_dtype or model.backbone.compute_dtype
        # The default for `stream`/`generate` when no sampler is given; `compile(sampler=...)`
        # sets it. Greedy: the same prompt gives the same text.
        self.sampler: Sampler = Sampler(temperature=0.0)
        self._caches = CacheStore(model.backbone, self.cache_dtype)
        self._lock = threading.Lock()
        self._variables = None
        self._fusion_plan = None
        self._jit_fuse = None
        self._fused: tuple[list, Any] | None = None  # (the values they came from, FusedWeights)
        self._jit_prefill = None
        self._jit_decode = None
        self._executables: dict = {}  # ahead-of-time compiled programs (see `precompile`)
        self._compiling: set = set()
        self._ran: set = set()  # keys of programs requests have run (compiled by jit)
        # Moves on each time the variables change and these three tables start again: a
        # `precompile` thread files its programs only if it began under the current one.
        self._generation = 0
        self._threads: list[threading.Thread] = []
        register_engine(self)

    # -- compiled functions ------------------------------------------------------------------
    def _compiled(self):
        with self._lock:
            return self._compiled_locked()

    def _compiled_locked(self):
        variables = list(self.model.variables)
        if (
            self._variables is None
            or len(variables) != len(self._variables)
            or any(a is not b for a, b in zip(variables, self._variables, strict=True))
        ):
            # New variables (LoRA enabled, quantized): trace afresh against them. Under the lock
            # and with a new generation, so that a `precompile` thread still compiling against
            # the old variables cannot file its program in the new table.
            self._generation += 1
            self._variables = variables
            self._jit_prefill = jax.jit(
                partial(prefill, self.model, variables, self.trace_counts),
                static_argnames=("plan", "num_alternatives", "fresh"),
                donate_argnames=("cache", "valid"),
            )
            self._jit_decode = jax.jit(
                partial(decode_n_tokens, self.model, variables, self.trace_counts),
                static_argnames=("plan", "num_alternatives", "chunk"),
                donate_argnames=("state",),
                compiler_options=decode_compiler_options(),
            )
            self._fusion_plan = fusion_plan(self.model)
            self._jit_fuse = jax.jit(
                partial(derive_in_scope, self.model, variables, plan=self._fusion_plan)
            )
            self._fused = None
            self._caches.clear()
            self._executables = {}
            self._compiling = set()
            self._ran = set()
        return self._jit_prefill, self._jit_decode

    def _plan(self, sampler: Sampler) -> SamplerPlan:
        """The sampler's static plan on this engine: whether the native kernel runs comes from
        the inference layout (`fusion_plan`), decided once per model and device."""
        return sampler.plan._replace(kernels=bool(self._fusion_plan[2]))

    def _key(
        self,
        kind,
        batch,
        cache_length,
        chunk_length,
        plan,
        num_alternatives,
        stop_count,
        edits: tuple = (),
    ):
        """Which compiled program (``kind``: "prefill" or "decode") serves these shapes and
        these edits' functions (``EditSet.spec``; their numbers are traced)."""
        return (
            kind,
            batch,
            cache_length,
            chunk_length,
            plan,
            num_alternatives,
            stop_count,
            self.chunk_size,
            edits,
        )

    def _prefill(
        self,
        weights,
        token_ids,
        token_valid,
        positions,
        last_index,
        start,
        cache,
        valid,
        seen,
        key,
        stop_ids,
        params,
        *,
        plan,
        num_alternatives,
        fresh=False,
    ):
        """`prefill`, through a program compiled ahead of time by `precompile` when there is one
        (those are chat-turn chunks: never ``fresh``)."""
        compiled = None
        if not fresh:
            program_key = self._key(
                "prefill",
                token_ids.shape[0],
                valid.shape[1],
                token_ids.shape[1],
                plan,
                num_alternatives,
                stop_ids.shape[0],
                weights[2].spec,
            )
            compiled = self._executables.get(program_key)
            self._ran.add(program_key)
        # Under a keras.distribution the batch is laid out as the distribution lays out data, so
        # that the mask and cache are split like the queries and keys (cuDNN requires it).
        token_ids, token_valid, positions, last_index, cache, valid, seen = place_batch(
            (token_ids, token_valid, positions, last_index, cache, valid, seen)
        )
        args = (
            weights,
            token_ids,
            token_valid,
            positions,
            last_index,
            start,
            cache,
            valid,
            seen,
            key,
            stop_ids,
            params,
        )
        if compiled is not None:
            return compiled(*args)
        return self._jit_prefill(*args, plan=plan, num_alternatives=num_alternatives, fresh=fresh)

    def _decode(self, weights, state, num_steps, stop_ids, params, plan, num_alternatives):
        program_key = self._key(
            "decode",
            state.token.shape[0],
            state.valid.shape[1],
            1,
            plan,
            num_alternatives,
            stop_ids.shape[0],
            weights[2].spec,
        )
        compiled = self._executables.get(program_key)
        self._ran.add(program_key)
        args = (weights, state, np.int32(num_steps), stop_ids, params)
        if compiled is not None:
            return compiled(*args)
        return self._jit_decode(
            *args, plan=plan, num_alternatives=num_alternatives, chunk=self.chunk_size
        )

    def weights(self) -> tuple[list, Any]:
        """``(values, fused)``: the current variable values, read at each request (training may
        have changed them), and the inference layouts derived from them (`fused_weights`),
        derived again only when a value changed."""
        self._compiled()
        values = [v.value for v in self._variables]
        with self._lock:
            kept = self._fused
        if kept is not None and all(a is b for a, b in zip(kept[0], values, strict=True)):
            return values, kept[1]
        fused = self._jit_fuse(values)
        with self._lock:
            self._fused = (values, fused)
            if kept is not None:
                self._caches.clear()  # its keys were computed with the old weights
        return values, fused

    # -- the kept cache (see `kept_cache`) ---------------------------------------------------
    def cache_length_for(self, needed: int) -> int:
        """The cache length a request needing ``needed`` slots gets."""
        return self._caches.length_for(needed)

    def clear_cache(self) -> None:
        """Frees the kept cache (its memory), e.g. before loading other weights."""
        self._caches.clear()

    # -- one request -------------------------------------------------------------------------
    def generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampler: Sampler | None = None,
        stop_token_ids: Sequence[int] = (),
        num_alternatives: int = 0,
        cancel_event: threading.Event | None = None,
        seed: int | None = None,
        timings: RequestTimings | None = None,
        min_cache_length: int = 0,
        edits: EditSet | None = None,
    ) -> Iterator[StepOutputs]:
        """Yields `StepOutputs` of numpy arrays (``[B, n]``) chunk by chunk as tokens are made.

        Rows stop at their first stop token (which is yielded; callers drop it). The generator
        ends after ``max_new_tokens`` tokens, when every row stopped, when the cache is full
        (the model's context), or when ``cancel_event`` is set. Closing it early is safe: the
        chunk in flight is waited for and the cache is kept for the next request.
        ``min_cache_length``: make the cache at least this long (a chat that will grow asks for
        room up front, so its decode program is not compiled again at each new length).
        ``edits``: changes at the model's hook points for every position, prompt and reply
        (steering); new numbers in the same edits compile nothing, and a kept cache computed
        under other edits is not reused.
        """
        sampler = sampler or Sampler(temperature=0.0)
        batch = len(prompts)
        prompts = [[int(t) for t in p] for p in prompts]
        if batch == 0 or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        timings = timings or RequestTimings()
        timings.started = timings.started or time.perf_counter()
        if _cancelled(cancel_event):
            return  # stopped before it started: not one token
        jit_prefill, jit_decode = self._compiled()
        edits = edits or EditSet()
        weights = (*self.weights(), edits)
        signature = edits_signature(edits)
        context = int(self.model.backbone.max_sequence_length)
        longest = max(len(p) for p in prompts)
        if longest >= context:
            raise ValueError(
                f"The prompt has {longest} tokens; the model's context is {context}. Shorten it."
            )

        # One row reuses a kept prefix and is right-padded; a batch is left-padded so that
        # every row's next token goes to the same cache slot. Long prompts go in chunks of
        # `MAX_PREFILL_CHUNK`, so that every prompt length shares a few compiled programs.
        cache, start = self._caches.take(prompts, max_new_tokens, min_cache_length, signature)
        cache_length = int(cache[0][0].shape[1])
        chunk_length, padded = prefill_chunks(longest - start, start)
        if start and start + padded > cache_length:
            # The padded chunk would run past the end of the cache: prefill some of the kept
            # prefix again instead.
            start = max(0, cache_length - padded)
            chunk_length, padded = prefill_chunks(longest - start, start)
        chunk_length = min(chunk_length, cache_length - start)
        padded = max(padded, chunk_length)
        self.last_request = record = CacheRecord.of(cache, prompts, start)
        arrays = prompt_arrays(
            prompts, start, padded, cache_length, int(self.model.backbone.vocabulary_size)
        )
        token_ids, token_valid, positions, last, length, valid, seen = arrays
        stops = sorted({int(t) for t in stop_token_ids})
        stop_ids = np.full((stop_slots(len(stops)),), -1, np.int32)
        stop_ids[: len(stops)] = stops
        seed = seed if seed is not None else sampler.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        key = jax.random.key(seed)
        plan, params = self._plan(sampler), sampler.params()
        timings.prompt_tokens = longest
        timings.prefilled_tokens = length

        for offset in range(0, last + 1, chunk_length):
            # Near the end of the context the last chunk would not fit: it moves back, over
            # tokens already prefilled (their keys are written again, unchanged).
            shift = max(0, start + offset + chunk_length - cache_length)
            piece = slice(offset - shift, offset + chunk_length - shift)
            if piece.start < 0:
                raise ValueError("The prompt does not fit in the model's context.")
            row_last = min(last, piece.stop - 1) - piece.start
            state, first = self._prefill(
                weights,
                token_ids[:, piece],
                token_valid[:, piece],
                positions[:, piece],
                np.full((batch,), row_last, np.int32),
                np.int32(start + piece.start),
                cache,
                valid,
                seen,
                key,
                stop_ids,
                params,
                plan=plan,
                num_alternatives=num_alternatives,
                fresh=start + piece.start == 0,
            )
            cache, valid, key = state.cache, state.valid, state.key
        # For one row: every token id in order, to know what the kept cache will hold.
        generated = [list(prompts[0])] if batch == 1 else None
        in_flight = None
        produced = 0
        try:
            first = StepOutputs(*jax.device_get(first))
            timings.first_token = timings.last_token = time.perf_counter()
            produced = 1
            timings.generated = 1
            if generated is not None:
                generated[0].append(int(first.tokens[0, 0]))
            yield first
            done = np.isin(first.tokens[:, 0], stops)
            # Each chunk is dispatched before the previous one's tokens are read back, so the
            # device keeps working while the host turns tokens into events.
            chunk = 1
            step_s = None  # measured seconds per decode step
            read_at = timings.first_token
            if produced < max_new_tokens and not done.all() and not _cancelled(cancel_event):
                in_flight = self._decode(
                    weights,
                    state,
                    min(chunk, max_new_tokens - produced),
                    stop_ids,
                    params,
                    plan,
                    num_alternatives,
                )
                state = None  # donated
                planned = produced + min(chunk, max_new_tokens - produced)
            while in_flight is not None:
                state, outputs, steps = in_flight
                in_flight = None
                chunk = decode_call_tokens(step_s, chunk, self.chunk_size)
                if planned < max_new_tokens and not _cancelled(cancel_event):
                    count = min(chunk, max_new_tokens - planned)
                    in_flight = self._decode(
                        weights, state, count, stop_ids, params, plan, num_alternatives
                    )
                    planned += count
                    state = None
                steps, outputs = jax.device_get((steps, outputs))
                steps = int(steps)
                if steps == 0:
                    break  # every row stopped, or the cache is full
                outputs = StepOutputs(*(o[:, :steps] for o in outputs))
                timings.last_token = time.perf_counter()
                # The device ran this call while the host waited for the previous one.
                measured = (timings.last_token - read_at) / steps
                step_s = measured if step_s is None else 0.5 * (step_s + measured)
                read_at = timings.last_token
                produced += steps
                timings.generated = produced
                if generated is not None:
                    generated[0].extend(int(t) for t in outputs.tokens[0])
                if _cancelled(cancel_event):
                    break
                yield outputs
                done |= np.isin(outputs.tokens, stops).any(axis=1)
                if done.all() or _cancelled(cancel_event):
                    break
        finally:
            # Wait for the chunk in flight (at most one) so the cache comes back whole.
            if in_flight is not None:
                state, outputs, steps = in_flight
                steps = int(steps)
                if generated is not None:
                    generated[0].extend(int(t) for t in np.asarray(outputs.tokens)[0, :steps])
            if state is not None:
                index = int(state.index)
                held = generated[0][:index] if generated is not None else []
                self._caches.keep(state.cache, held, batch, signature)
                self.last_request = dataclasses.replace(record, held_ids=tuple(held))

    def kept_cache_length(self) -> int | None:
        """Slots of the cache kept from the last request (None when nothing is kept)."""
        kept = self._caches.kept
        return None if kept is None else kept.length


def _cancelled(event: threading.Event | None) -> bool:
    return event is not None and event.is_set()
