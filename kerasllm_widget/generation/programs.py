"""The engine's traced programs: `prefill` over a prompt chunk and `decode_n_tokens` (up to k
`decode_one_token` steps in one ``lax.while_loop``), both on the model's one forward
(`kerasllm_widget.models.llama3_forward`) with the weights passed as arguments."""

from __future__ import annotations

import threading
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import keras
import numpy as np

from kerasllm_widget.generation.engine_outputs import StepOutputs
from kerasllm_widget.generation.samplers import (
    SamplerParams,
    SamplerPlan,
    sample_next_token,
    top_k,
)
from kerasllm_widget.models import llama3_forward

__all__ = [
    "DecodeState",
    "decode_n_tokens",
    "decode_one_token",
    "grow_cache",
    "phase",
    "prefill",
    "prompt_arrays",
    "zero_cache",
]


class DecodeState(NamedTuple):
    """Everything a decode step carries forward, all on the device."""

    cache: list  # per layer (keys, values), each [B, S, kv_heads, head_dim]
    valid: jax.Array  # [B, S] bool: slots holding a real token's keys
    seen: jax.Array  # [B, V] bool: tokens in prompt or reply (repetition penalty)
    token: jax.Array  # [B] int32: the last picked token, not yet in the cache
    position: jax.Array  # [B] int32: its RoPE position
    index: jax.Array  # [] int32: the cache slot it goes to
    done: jax.Array  # [B] bool: the row picked a stop token
    key: jax.Array  # PRNG key


class _Phase(threading.local):
    name = ""  # "background_" while `precompile` traces, so counts tell the two apart


phase = _Phase()


# These run under `jax.jit`; `model` is bound with functools.partial and static.


def _forward(model, variables, weights, token_ids, positions, attention_mask, cache, cache_index):
    """Hidden states ``[B, T, D]`` and the updated cache: the model's one forward
    (`llama3_forward.forward`) with `weights` (``(values, layout, edits)``) standing in for the
    model's variables, so they are jit arguments, not constants; the engine's inference layout;
    and the request's edits at hook points (an `EditSet`: steering, for one)."""
    values, layout, edits = weights
    hooks = edits.hooks()
    with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
        return llama3_forward.forward(
            model.backbone,
            token_ids,
            positions=positions,
            attention_mask=attention_mask,
            cache=cache,
            cache_index=cache_index,
            layout=layout,
            hooks=hooks,
        )


def _logits(model, variables, weights, hidden):
    values, layout, edits = weights
    with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
        return llama3_forward.logits(model.backbone, hidden, layout, edits.hooks())


def _pick(logits, key, seen, plan: SamplerPlan, params: SamplerParams, num_alternatives: int):
    """Samples one token per row and reports its log-probability and the top alternatives, both
    under the model's own (unmodified) distribution."""
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    token = sample_next_token(logits, key, plan, params, seen)
    logprob = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
    if num_alternatives:
        alt_logprobs, alt_ids = top_k(logprobs, num_alternatives, plan.kernels)
    else:
        batch = logits.shape[0]
        alt_logprobs = jnp.zeros((batch, 0), jnp.float32)
        alt_ids = jnp.zeros((batch, 0), jnp.int32)
    return token, logprob, alt_ids.astype(jnp.int32), alt_logprobs


def _mark_seen(seen, token):
    return seen.at[jnp.arange(seen.shape[0]), token].set(True)


def prefill(
    model,
    variables,
    counter,
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
    plan: SamplerPlan,
    num_alternatives: int,
    fresh: bool = False,
):
    """Runs the prompt chunk ``token_ids [B, T]`` into cache slots ``[start, start + T)`` and picks
    the next token. ``valid [B, S]`` marks the slots before ``start`` that already hold keys (an
    earlier chunk, or an earlier request with the same prefix). ``fresh``: the caller promises
    ``start`` is 0 (the first chunk of a prompt without a reused prefix), so attention skips
    the rest of the cache.

    Returns ``(DecodeState, StepOutputs)`` with one token per row.
    """
    counter[phase.name + "prefill"] += 1  # runs once per trace: counts compilations
    length = token_ids.shape[1]
    cache_length = cache[0][0].shape[1]
    valid = jax.lax.dynamic_update_slice(valid, token_valid, (0, start))
    query_slots = start + jnp.arange(length)
    if fresh:
        # Nothing before this chunk (``start`` is 0): the queries attend to the chunk's own
        # ``length`` slots, not the whole cache (a 100-token prompt in a 256-slot cache did
        # twice the attention work), and the keys go to the front of the cache afterwards.
        slots = jnp.arange(length)
        attention_mask = token_valid[:, None, :] & (slots[None, None, :] <= slots[None, :, None])
        front = [(k[:, :length], v[:, :length]) for k, v in cache]
        hidden, front = _forward(
            model, variables, weights, token_ids, positions, attention_mask, front, 0
        )
        cache = [
            (
                jax.lax.dynamic_update_slice(k, fk, (0, 0, 0, 0)),
                jax.lax.dynamic_update_slice(v, fv, (0, 0, 0, 0)),
            )
            for (k, v), (fk, fv) in zip(cache, front, strict=True)
        ]
    else:
        slots = jnp.arange(cache_length)
        attention_mask = valid[:, None, :] & (slots[None, None, :] <= query_slots[None, :, None])
        hidden, cache = _forward(
            model, variables, weights, token_ids, positions, attention_mask, cache, start
        )
    # Only the last real position's logits are needed: skip the [T, V] projection.
    last_hidden = jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)
    logits = _logits(model, variables, weights, last_hidden)[:, 0]
    key, subkey = jax.random.split(key)
    token, logprob, alt_ids, alt_logprobs = _pick(
        logits, subkey, seen, plan, params, num_alternatives
    )
    state = DecodeState(
        cache=cache,
        valid=valid,
        seen=_mark_seen(seen, token),
        token=token,
        position=jnp.take_along_axis(positions, last_index[:, None], axis=1)[:, 0] + 1,
        index=(start + jnp.max(last_index) + 1).astype(jnp.int32),
        done=jnp.isin(token, stop_ids),
        key=key,
    )
    outputs = StepOutputs(token[:, None], logprob[:, None], alt_ids[:, None], alt_logprobs[:, None])
    return state, outputs


def decode_one_token(model, variables, weights, state: DecodeState, plan, params, num_alternatives):
    """Feeds ``state.token`` at cache slot ``state.index`` and picks the next token."""
    valid = jax.lax.dynamic_update_slice(
        state.valid, jnp.ones((state.valid.shape[0], 1), bool), (0, state.index)
    )
    hidden, cache = _forward(
        model,
        variables,
        weights,
        state.token[:, None],
        state.position[:, None],
        valid[:, None, :],
        state.cache,
        state.index,
    )
    logits = _logits(model, variables, weights, hidden)[:, 0]
    key, subkey = jax.random.split(state.key)
    token, logprob, alt_ids, alt_logprobs = _pick(
        logits, subkey, state.seen, plan, params, num_alternatives
    )
    new_state = DecodeState(
        cache=cache,
        valid=valid,
        seen=_mark_seen(state.seen, token),
        token=token,
        position=state.position + 1,
        index=state.index + 1,
        done=state.done,
        key=key,
    )
    return new_state, (token, logprob, alt_ids, alt_logprobs)


def decode_n_tokens(
    model,
    variables,
    counter,
    weights,
    state: DecodeState,
    num_steps,
    stop_ids,
    params,
    *,
    plan: SamplerPlan,
    num_alternatives: int,
    chunk: int,
):
    """Up to ``num_steps`` (<= ``chunk``) decode steps in one program; stops early once every
    row is done or the cache is full. Returns ``(state, StepOutputs [B, chunk], steps_run)``."""
    counter[phase.name + "decode"] += 1
    batch = state.token.shape[0]
    cache_length = state.valid.shape[1]
    buffers = StepOutputs(
        jnp.zeros((batch, chunk), jnp.int32),
        jnp.zeros((batch, chunk), jnp.float32),
        jnp.zeros((batch, chunk, num_alternatives), jnp.int32),
        jnp.zeros((batch, chunk, num_alternatives), jnp.float32),
    )

    def keep_going(carry):
        step, state, _ = carry
        return (step < num_steps) & ~jnp.all(state.done) & (state.index < cache_length)

    def one_step(carry):
        step, state, buffers = carry
        state, picked = decode_one_token(
            model, variables, weights, state, plan, params, num_alternatives
        )
        state = state._replace(done=state.done | jnp.isin(picked[0], stop_ids))
        buffers = StepOutputs(*(b.at[:, step].set(v) for b, v in zip(buffers, picked, strict=True)))
        return step + 1, state, buffers

    steps, state, buffers = jax.lax.while_loop(keep_going, one_step, (jnp.int32(0), state, buffers))
    return state, buffers, steps


@partial(jax.jit, static_argnames=("layers", "shape", "dtype"))
def zero_cache(*, layers: int, shape: tuple, dtype: str):
    """A zeroed cache in one dispatch (`Llama3Backbone.init_cache` makes its 2 x layers arrays
    one by one: about 60 eager calls, 10-15 ms on a 2-core CPU, before every fresh prompt)."""
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(layers)]


@partial(jax.jit, static_argnums=1)
def grow_cache(cache, new_length: int):
    """Pads a cache to ``new_length`` slots, keeping what it holds."""
    widths = ((0, 0), (0, new_length - cache[0][0].shape[1]), (0, 0), (0, 0))
    return [(jnp.pad(k, widths), jnp.pad(v, widths)) for k, v in cache]


class PromptArrays(NamedTuple):
    """A request's prompt laid out for `prefill` (numpy, on the host)."""

    token_ids: np.ndarray  # [B, padded] the tokens after the reused prefix
    token_valid: np.ndarray  # [B, padded] real tokens (not padding)
    positions: np.ndarray  # [B, padded] RoPE positions
    last: int  # the column of the last real token
    length: int  # tokens to prefill (the longest row after the prefix)
    valid: np.ndarray  # [B, cache_length] slots that already hold keys (the reused prefix)
    seen: np.ndarray  # [B, vocabulary] tokens in the prompt (repetition penalty)


def prompt_arrays(
    prompts: list[list[int]], start: int, padded: int, cache_length: int, vocabulary: int
) -> PromptArrays:
    """One row reuses a kept prefix (``start`` tokens) and is right-padded; a batch is
    left-padded so that every row's next token goes to the same cache slot."""
    batch = len(prompts)
    fresh = [p[start:] for p in prompts]
    length = max(len(p) for p in fresh)
    token_ids = np.zeros((batch, padded), np.int32)
    token_valid = np.zeros((batch, padded), bool)
    positions = np.zeros((batch, padded), np.int32)
    if batch == 1:
        token_ids[0, :length] = fresh[0]
        token_valid[0, :length] = True
        positions[0] = start + np.arange(padded)
        last = length - 1
    else:
        for row, ids in enumerate(fresh):
            token_ids[row, padded - len(ids) :] = ids
            token_valid[row, padded - len(ids) :] = True
            positions[row] = np.maximum(np.arange(padded) - (padded - len(ids)), 0)
        last = padded - 1
    valid = np.broadcast_to(np.arange(cache_length)[None, :] < start, (batch, cache_length))
    seen = np.zeros((batch, vocabulary), bool)
    for row, ids in enumerate(prompts):
        seen[row, np.asarray(ids, np.int64) % vocabulary] = True
    return PromptArrays(token_ids, token_valid, positions, last, length, valid, seen)
