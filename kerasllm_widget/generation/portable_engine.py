"""Token generation for Keras backends other than JAX (PyTorch): eager, one token per step.

The JAX `GenerationEngine` compiles prefill and decode with ``jax.jit`` over the model's weights,
which only works when those weights are JAX arrays. `PortableGenerationEngine` has the same
``generate_tokens`` interface, so `stream`, `generate` and `ChatState` work unchanged on torch:
the model runs eagerly through `keras.ops` (``Llama3CausalLM.call_with_cache`` on a static
cache) and the next token is picked by the very same sampler functions as on JAX, on the host,
so greedy decoding gives the same tokens and a seeded sampler the same draws.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from kerasllm_widget.generation.engine_outputs import RequestTimings, StepOutputs
from kerasllm_widget.generation.samplers import Sampler, sample_next_token

__all__ = ["PortableGenerationEngine"]


def _no_grad():
    """Inference needs no autograd graph (on torch it would keep every activation alive)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class PortableGenerationEngine:
    """`GenerationEngine`'s interface over plain Keras calls, for the torch backend.

    Example:
        >>> engine = PortableGenerationEngine(model)  # doctest: +SKIP
        >>> next(engine.generate_tokens([[1, 2, 3]], max_new_tokens=4)).tokens  # doctest: +SKIP
        array([[17]], dtype=int32)
    """

    def __init__(self, model) -> None:
        # Weakly, as `GenerationEngine`: the registry must not keep the model alive.
        self.model = model if isinstance(model, weakref.ProxyTypes) else weakref.proxy(model)
        self.sampler: Sampler = Sampler(temperature=0.0)
        self.trace_counts: Counter = Counter()  # nothing is compiled: stays empty
        self.chunk_size = 1

    def clear_cache(self) -> None:
        """Nothing is kept between requests here."""

    def cache_slots_left(self) -> int | None:
        return None

    def kept_cache_length(self) -> int | None:
        """No cache is kept between requests, so a chat never needs a larger one prepared."""
        return None

    def cache_length_for(self, needed: int) -> int:
        return min(int(self.model.backbone.max_sequence_length), int(needed))

    def precompile(self, *args, **kwargs) -> None:
        """Nothing is compiled ahead here: eager steps need no programs."""
        return None

    def _pick(
        self, logits: np.ndarray, key, seen: np.ndarray, sampler: Sampler, num_alternatives: int
    ):
        import jax
        import jax.numpy as jnp

        key, subkey = jax.random.split(key)
        token = np.asarray(
            sample_next_token(
                jnp.asarray(logits), subkey, sampler.plan, sampler.params(), jnp.asarray(seen)
            ),
            np.int32,
        )
        logprobs = _log_softmax(logits.astype(np.float64)).astype(np.float32)
        rows = np.arange(len(token))
        logprob = logprobs[rows, token]
        if num_alternatives:
            alt_ids = np.argsort(-logprobs, axis=-1, kind="stable")[:, :num_alternatives]
            alt_logprobs = np.take_along_axis(logprobs, alt_ids, axis=-1)
        else:
            alt_ids = np.zeros((len(token), 0), np.int32)
            alt_logprobs = np.zeros((len(token), 0), np.float32)
        return key, token, logprob, alt_ids.astype(np.int32), alt_logprobs

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
    ) -> Iterator[StepOutputs]:
        """Yields one `StepOutputs` (numpy ``[B, 1]``) per generated token; rows stop at their
        first stop token (yielded), all stop at ``max_new_tokens``, the context's end or
        ``cancel_event``. Arguments as in `GenerationEngine.generate_tokens`."""
        import jax

        sampler = sampler or Sampler(temperature=0.0)
        prompts = [[int(t) for t in p] for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        timings = timings or RequestTimings()
        timings.started = timings.started or time.perf_counter()
        backbone = self.model.backbone
        context = int(backbone.max_sequence_length)
        batch, longest = len(prompts), max(len(p) for p in prompts)
        if longest >= context:
            raise ValueError(
                f"The prompt has {longest} tokens; the model's context is {context}. Shorten it."
            )
        cache_length = min(context, max(longest + max_new_tokens, min_cache_length))
        # Left-padded, so that every row's next token goes to the same cache slot.
        token_ids = np.zeros((batch, longest), np.int32)
        valid = np.zeros((batch, cache_length), bool)
        for row, ids in enumerate(prompts):
            token_ids[row, longest - len(ids) :] = ids
            valid[row, longest - len(ids) : longest] = True
        positions = np.maximum(np.cumsum(valid[:, :longest], axis=1) - 1, 0).astype(np.int32)
        slots = np.arange(cache_length)
        attention_mask = valid[:, None, :] & (
            slots[None, None, :] <= np.arange(longest)[None, :, None]
        )
        vocab = int(backbone.vocabulary_size)
        seen = np.zeros((batch, vocab), bool)
        for row, ids in enumerate(prompts):
            seen[row, np.asarray(ids, np.int64) % vocab] = True
        stops = {int(t) for t in stop_token_ids}
        seed = seed if seed is not None else sampler.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        key = jax.random.key(seed)
        timings.prompt_tokens = timings.prefilled_tokens = longest

        with _no_grad():
            cache = backbone.init_cache(batch, cache_length)
            logits, cache = self.model.call_with_cache(
                token_ids, cache, 0, positions, attention_mask
            )
            last = keras.ops.convert_to_numpy(keras.ops.cast(logits[:, -1], "float32"))
        index, position = longest, positions[:, -1] + 1
        done = np.zeros(batch, bool)
        for produced in range(max_new_tokens):
            key, token, logprob, alt_ids, alt_logprobs = self._pick(
                last, key, seen, sampler, num_alternatives
            )
            seen[np.arange(batch), token] = True
            now = time.perf_counter()
            timings.first_token = timings.first_token or now
            timings.last_token = now
            timings.generated = produced + 1
            yield StepOutputs(
                token[:, None], logprob[:, None], alt_ids[:, None], alt_logprobs[:, None]
            )
            done |= np.isin(token, list(stops))
            if done.all() or index >= cache_length or produced + 1 >= max_new_tokens:
                return
            if cancel_event is not None and cancel_event.is_set():
                return
            valid[:, index] = True
            with _no_grad():
                logits, cache = self.model.call_with_cache(
                    token[:, None],
                    cache,
                    index,
                    position[:, None].astype(np.int32),
                    valid[:, None, :].copy(),
                )
                last = keras.ops.convert_to_numpy(keras.ops.cast(logits[:, -1], "float32"))
            index, position = index + 1, position + 1
