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

import atexit
import dataclasses
import functools
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import keras
import numpy as np

from kerasllm_widget._paths import cache_root
from kerasllm_widget.distribution import place_batch
from kerasllm_widget.generation.engine_outputs import RequestTimings, StepOutputs
from kerasllm_widget.generation.fused_weights import derive_in_scope, fusion_plan
from kerasllm_widget.generation.portable_engine import PortableGenerationEngine
from kerasllm_widget.generation.samplers import (
    Sampler,
    SamplerParams,
    SamplerPlan,
    sample_next_token,
    top_k,
)
from kerasllm_widget.generation.stopping import stop_token_ids_of
from kerasllm_widget.models import llama3_forward

__all__ = [
    "DecodeState",
    "GenerationEngine",
    "StepOutputs",
    "decode_call_tokens",
    "enable_compilation_cache",
    "engine_for",
    "prompt_bucket",
    "stop_slots",
]

MIN_PROMPT_BUCKET = 16
FINE_BUCKETS_FROM = 64  # above this, prompt buckets are quarter-octave steps, not powers of two
MAX_PREFILL_CHUNK = 512
CONTINUATION_CHUNK = 128  # prefill chunk after a reused prefix (the next turn of a chat)
# A chat turn of at most this many new tokens (most user messages, with the template's tokens
# and the previous reply's end) is prefilled as one chunk of this size: a quarter of the work.
SHORT_CONTINUATION_CHUNK = 32
CONTINUATION_CHUNKS = (SHORT_CONTINUATION_CHUNK, CONTINUATION_CHUNK)
MIN_CACHE_BUCKET = 256
# A decode call runs for about this long: Stop waits for the call being read back and the one in
# flight behind it, so it lands within about twice this.
DECODE_CALL_S = 0.1


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def stop_slots(count: int) -> int:
    """How many stop-id slots (padded with -1) a compiled program has for ``count`` stop ids: at
    least 8, then powers of two. Requests and `GenerationEngine.precompile` both size them here:
    a model with more than 8 stop ids once found none of the programs compiled ahead for its
    chat (they had 8 slots, its turns 16) and compiled every turn in the foreground.

    Example:
        >>> [stop_slots(n) for n in (0, 1, 8, 9, 17)]
        [8, 8, 8, 16, 32]
    """
    return max(8, _next_power_of_two(count))


def prompt_bucket(length: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """The padded length a prompt of ``length`` tokens is prefilled at: a power of two up to
    `FINE_BUCKETS_FROM`, then quarter steps between powers of two (80, 96, 112, 128, 160, ...).

    Prefill time is about proportional to the padded length (on a CPU the products run at a
    fixed rate per row), so a 100-token prompt at 112 rather than 128 is ~12% faster; the price
    is at most four programs per doubling instead of one.

    Example:
        >>> [prompt_bucket(n) for n in (1, 16, 17, 64, 65, 100, 129, 300)]
        [16, 16, 32, 64, 80, 112, 160, 320]
    """
    bucket = max(minimum, _next_power_of_two(length))
    if bucket <= FINE_BUCKETS_FROM:
        return bucket
    step = bucket // 8  # a quarter of the octave below `bucket`
    return -(-int(length) // step) * step


def default_cache_dir() -> Path:
    """Where compiled programs are kept between kernels: ``$XDG_CACHE_HOME/kerasllm_widget/jax``."""
    return cache_root() / "jax"


_compilation_cache_lock = threading.Lock()
_compilation_cache_done = False


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turns JAX's persistent compilation cache on, so a restarted kernel skips compile time.

    Leaves a cache directory the user configured alone. Set ``KERASLLM_COMPILATION_CACHE=0`` to
    keep it off. Returns the directory in use (None when off).

    Example:
        >>> enable_compilation_cache()  # doctest: +SKIP
        PosixPath('/home/me/.cache/kerasllm_widget/jax')
    """
    global _compilation_cache_done
    with _compilation_cache_lock:
        current = jax.config.jax_compilation_cache_dir
        if current:
            return Path(current)
        if os.environ.get("KERASLLM_COMPILATION_CACHE", "1") == "0":
            return None
        folder = Path(path) if path is not None else default_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None  # a read-only home: compile every time rather than fail
        jax.config.update("jax_compilation_cache_dir", str(folder))
        # Our programs take seconds to compile; cache them all, however small.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        _compilation_cache_done = True
        return folder


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


_phase = _Phase()


# ----------------------------------------------------------------------------- pure functions
# These run under `jax.jit`; `model` is bound with functools.partial and static.


def _forward(
    model, variables, weights, token_ids, positions, attention_mask, cache, cache_index, hooks=None
):
    """Hidden states ``[B, T, D]`` and the updated cache: the model's one forward
    (`llama3_forward.forward`) with `weights` (``(values, layout)``) standing in for the model's
    variables, so they are jit arguments, not constants, and the engine's inference layout."""
    values, layout = weights
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


def _logits(model, variables, weights, hidden, hooks=None):
    values, layout = weights
    with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
        return llama3_forward.logits(model.backbone, hidden, layout, hooks)


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
    counter[_phase.name + "prefill"] += 1  # runs once per trace: counts compilations
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
    counter[_phase.name + "decode"] += 1
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


def decode_call_tokens(step_s: float | None, previous: int, most: int) -> int:
    """Tokens for the next decode call: doubling from 1 (the second token shows fast), and no
    more than `DECODE_CALL_S` worth at the measured seconds per step (so Stop lands soon), nor
    more than ``most`` (the compiled chunk).

    Example:
        >>> [decode_call_tokens(None, n, 16) for n in (0, 1, 2, 8, 16)]
        [1, 2, 4, 16, 16]
        >>> decode_call_tokens(0.04, 8, 16), decode_call_tokens(0.002, 8, 64)
        (2, 16)
    """
    count = min(most, max(1, 2 * previous))
    if step_s is not None and step_s > 0:
        count = min(count, max(1, int(DECODE_CALL_S / step_s)))
    return count


# On a GPU the decode loop runs as CUDA graphs, its while loop and conditionals included: a step
# at batch 1 is some 280 small kernels, and launched one by one the device waits on the host for
# about 40% of the step (H200, Llama-3.2-1B shape: 636 -> 701 tok/s at batch 1, 6,909 -> 7,663 at
# batch 8). Only the decode program: prefill's larger kernels gain nothing and it compiles slower.
_GPU_DECODE_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
}


# On a CPU, XLA hands reductions to YNNPACK ("library fusions"); at one token per step each of
# those calls costs more than the reduction (SmolLM2: 72 calls, about a third of a step). The
# decode program keeps only YNNPACK's dot products; its reductions stay XLA loops.
_CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _cpu_options_supported(options: tuple) -> bool:
    """Whether this jaxlib accepts ``options`` (the option is experimental and may go away)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except Exception:  # an unknown option or value: compile with the defaults instead
        return False
    return True


def decode_compiler_options(backend: str | None = None) -> dict | None:
    """XLA options for the compiled decode program on ``backend`` (the default backend).

    Example:
        >>> sorted(decode_compiler_options("gpu"))
        ['xla_gpu_enable_command_buffer']
    """
    backend = backend or jax.default_backend()
    if backend == "gpu":
        return dict(_GPU_DECODE_OPTIONS)
    if backend == "cpu" and _cpu_options_supported(tuple(_CPU_DECODE_OPTIONS.items())):
        return dict(_CPU_DECODE_OPTIONS)
    return None


def _prefill_chunks(length: int, start: int) -> tuple[int, int]:
    """``(chunk length, padded length)`` for prefilling ``length`` tokens after ``start``."""
    if start == 0 and length <= MAX_PREFILL_CHUNK:
        bucket = prompt_bucket(length)
        return bucket, bucket
    # A new chat turn over a kept prefix goes in chunks of one of two sizes, so a chat compiles
    # two prefill programs for all of its turns; long prompts go in chunks too.
    if start == 0:
        chunk = MAX_PREFILL_CHUNK
    elif length <= SHORT_CONTINUATION_CHUNK:
        chunk = SHORT_CONTINUATION_CHUNK
    else:
        chunk = CONTINUATION_CHUNK
    return chunk, -(-length // chunk) * chunk


@partial(jax.jit, static_argnames=("layers", "shape", "dtype"))
def _zero_cache(*, layers: int, shape: tuple, dtype: str):
    """A zeroed cache in one dispatch (`Llama3Backbone.init_cache` makes its 2 x layers arrays
    one by one: about 60 eager calls, 10-15 ms on a 2-core CPU, before every fresh prompt)."""
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(layers)]


@partial(jax.jit, static_argnums=1)
def _grow_cache(cache, new_length: int):
    """Pads a cache to ``new_length`` slots, keeping what it holds."""
    widths = ((0, 0), (0, new_length - cache[0][0].shape[1]), (0, 0), (0, 0))
    return [(jnp.pad(k, widths), jnp.pad(v, widths)) for k, v in cache]


# ----------------------------------------------------------------------------- the engine


@dataclasses.dataclass
class _KeptCache:
    cache: list
    token_ids: list[int]  # what slots [0, len) hold (batch 1 only; empty for batches)
    batch: int
    length: int
    dtype: str


class GenerationEngine:
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
        self._kept: _KeptCache | None = None
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
        _live_engines.add(self)

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
            self._kept = None
            self._executables = {}
            self._compiling = set()
            self._ran = set()
        return self._jit_prefill, self._jit_decode

    def _keep_program(self, generation: int, key, program) -> bool:
        """Files a program `precompile` compiled, unless the variables changed since it began
        (its program would take the old variables: a stale executable)."""
        with self._lock:
            if generation != self._generation:
                return False
            self._executables[key] = program
            return True

    def _plan(self, sampler: Sampler) -> SamplerPlan:
        """The sampler's static plan on this engine: whether the native kernel runs comes from
        the inference layout (`fusion_plan`), decided once per model and device."""
        return sampler.plan._replace(kernels=bool(self._fusion_plan[2]))

    def _key(self, kind, batch, cache_length, chunk_length, plan, num_alternatives, stop_count):
        """Which compiled program (``kind``: "prefill" or "decode") serves these shapes."""
        return (
            kind,
            batch,
            cache_length,
            chunk_length,
            plan,
            num_alternatives,
            stop_count,
            self.chunk_size,
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
        )
        compiled = self._executables.get(program_key)
        self._ran.add(program_key)
        args = (weights, state, np.int32(num_steps), stop_ids, params)
        if compiled is not None:
            return compiled(*args)
        return self._jit_decode(
            *args, plan=plan, num_alternatives=num_alternatives, chunk=self.chunk_size
        )

    def precompile(
        self,
        cache_length: int,
        sampler: Sampler | None = None,
        num_alternatives: int = 0,
        batch: int = 1,
        background: bool = True,
        stop_count: int | None = None,
    ) -> threading.Thread | None:
        """Compiles, ahead of need, the programs a longer chat will use: decode and the chat-turn
        prefill over a cache of ``cache_length`` slots. With ``background`` it runs on a daemon
        thread (while the user reads and types), so the turn that crosses into the larger
        cache does not wait for a compiler. ``stop_count``: how many stop ids the chat's requests
        carry (None: the model's own, `stop_token_ids_of` its tokenizer), which sizes the
        programs as those requests will (`stop_slots`).

        Example:
            >>> engine.precompile(1024, Sampler(temperature=0.7, top_p=0.9))  # doctest: +SKIP
        """
        sampler = sampler or self.sampler
        self._compiled()
        plan, params = self._plan(sampler), sampler.params()
        if stop_count is None:
            stop_count = len(stop_token_ids_of(getattr(self.model, "tokenizer", None)))
        slots = stop_slots(stop_count)
        cache_length = min(cache_length, int(self.model.backbone.max_sequence_length))
        decode_key = self._key("decode", batch, cache_length, 1, plan, num_alternatives, slots)
        prefill_keys = {
            chunk: self._key("prefill", batch, cache_length, chunk, plan, num_alternatives, slots)
            for chunk in CONTINUATION_CHUNKS
            if chunk <= cache_length
        }
        if _shutting_down.is_set():
            return None
        # Programs already compiled ahead, being compiled, or compiled by a request: skipped.
        with self._lock:
            # The programs and the generation they belong to, read together.
            jit_prefill, jit_decode = self._compiled_locked()
            generation = self._generation
            todo = [
                key
                for key in (decode_key, *prefill_keys.values())
                if key not in self._executables
                and key not in self._compiling
                and key not in self._ran
            ]
            if not todo:
                return None
            self._compiling.update(todo)

        def shaped(x):
            return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)

        def work():
            # Held for the compilation: a model deleted meanwhile is freed when it ends.
            model = self._model_ref() if self._model_ref is not None else self.model
            if model is None:
                with self._lock:
                    if generation == self._generation:
                        self._compiling.difference_update(todo)
                return
            _phase.name = "background_"
            try:
                weights = jax.tree.map(
                    lambda w: jax.ShapeDtypeStruct(w.shape, w.dtype), self.weights()
                )
                if generation != self._generation:
                    return  # the variables changed: these would be programs for the old ones
                backbone = self.model.backbone
                kv = (batch, cache_length, backbone.num_key_value_heads, backbone.head_dim)
                cache = [
                    (jax.ShapeDtypeStruct(kv, self.cache_dtype),) * 2
                    for _ in range(backbone.num_layers)
                ]
                vocab = int(backbone.vocabulary_size)
                key = jax.random.key(0)
                sds = jax.ShapeDtypeStruct
                valid = sds((batch, cache_length), jnp.bool_)
                seen = sds((batch, vocab), jnp.bool_)
                stop_ids = sds((slots,), jnp.int32)
                abstract_params = SamplerParams(*(shaped(p) for p in params))
                if decode_key in todo and not _shutting_down.is_set():
                    state = DecodeState(
                        cache=cache,
                        valid=valid,
                        seen=seen,
                        token=sds((batch,), jnp.int32),
                        position=sds((batch,), jnp.int32),
                        index=sds((), jnp.int32),
                        done=sds((batch,), jnp.bool_),
                        key=sds(key.shape, key.dtype),
                    )
                    program = jit_decode.lower(
                        weights,
                        state,
                        sds((), jnp.int32),
                        stop_ids,
                        abstract_params,
                        plan=plan,
                        num_alternatives=num_alternatives,
                        chunk=self.chunk_size,
                    ).compile()
                    if not self._keep_program(generation, decode_key, program):
                        return
                for chunk, program_key in prefill_keys.items():
                    if program_key not in todo or _shutting_down.is_set():
                        continue
                    ints = sds((batch, chunk), jnp.int32)
                    program = jit_prefill.lower(
                        weights,
                        ints,
                        sds((batch, chunk), jnp.bool_),
                        ints,
                        sds((batch,), jnp.int32),
                        sds((), jnp.int32),
                        cache,
                        valid,
                        seen,
                        sds(key.shape, key.dtype),
                        stop_ids,
                        abstract_params,
                        plan=plan,
                        num_alternatives=num_alternatives,
                    ).compile()
                    if not self._keep_program(generation, program_key, program):
                        return
            finally:
                _phase.name = ""
                with self._lock:
                    if generation == self._generation:  # else `_compiling` started again
                        self._compiling.difference_update(todo)

        if not background:
            work()
            return None
        thread = threading.Thread(target=work, name="kerasllm-precompile", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    @property
    def precompiled_cache_lengths(self) -> set[int]:
        """Cache lengths whose decode program `precompile` has made ready."""
        return {key[2] for key in list(self._executables) if key[0] == "decode"}

    def wait_for_precompile(self, timeout: float | None = None) -> None:
        """Blocks until background compilations started by `precompile` are done.

        Example:
            >>> engine.wait_for_precompile(timeout=60)  # doctest: +SKIP
        """
        for thread in list(self._threads):
            thread.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

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
                self._kept = None  # its keys were computed with the old weights
        return values, fused

    # -- cache management --------------------------------------------------------------------
    def cache_length_for(self, needed: int) -> int:
        context = int(self.model.backbone.max_sequence_length)
        return min(context, max(MIN_CACHE_BUCKET, _next_power_of_two(needed)))

    def _take_cache(self, prompts: list[list[int]], max_new_tokens: int, min_cache_length: int = 0):
        """A cache for this request and how many leading prompt tokens it already holds.

        A single row whose prompt starts with the tokens of the kept cache reuses them (the next
        turn of a chat prefills only the new turn); otherwise a cache of the right bucket is
        made, reusing the kept buffers when they have that shape.
        """
        with self._lock:
            kept, self._kept = self._kept, None
        batch, dtype = len(prompts), str(self.cache_dtype)
        if kept is not None and (kept.batch != batch or kept.dtype != dtype):
            kept = None
        reuse = 0
        if kept is not None and batch == 1 and kept.token_ids:
            prompt = prompts[0]
            limit = min(len(prompt) - 1, len(kept.token_ids))  # prefill needs >= 1 token
            while reuse < limit and prompt[reuse] == kept.token_ids[reuse]:
                reuse += 1
        longest = max(len(p) for p in prompts)
        needed = max(
            reuse + _prefill_chunks(longest - reuse, reuse)[1] + max_new_tokens, min_cache_length
        )
        length = self.cache_length_for(needed)
        if reuse and kept.length >= min(needed, length):
            return kept.cache, reuse
        if reuse:  # a longer chat: the kept keys move into a larger cache
            return _grow_cache(kept.cache, length), reuse
        if kept is not None and kept.length == length:
            return kept.cache, 0  # same shape: reuse the buffers
        del kept  # free the old buffers before the new ones are made
        backbone = self.model.backbone
        shape = (batch, length, backbone.num_key_value_heads, backbone.head_dim)
        return _zero_cache(layers=backbone.num_layers, shape=shape, dtype=dtype), 0

    def _keep_cache(self, cache, token_ids: list[int], batch: int):
        with self._lock:
            self._kept = _KeptCache(
                cache=cache,
                token_ids=token_ids if batch == 1 else [],
                batch=batch,
                length=int(cache[0][0].shape[1]),
                dtype=str(self.cache_dtype),
            )

    def clear_cache(self) -> None:
        """Frees the kept cache (its memory), e.g. before loading other weights."""
        with self._lock:
            self._kept = None

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
    ) -> Iterator[StepOutputs]:
        """Yields `StepOutputs` of numpy arrays (``[B, n]``) chunk by chunk as tokens are made.

        Rows stop at their first stop token (which is yielded; callers drop it). The generator
        ends after ``max_new_tokens`` tokens, when every row stopped, when the cache is full
        (the model's context), or when ``cancel_event`` is set. Closing it early is safe: the
        chunk in flight is waited for and the cache is kept for the next request.
        ``min_cache_length``: make the cache at least this long (a chat that will grow asks for
        room up front, so its decode program is not compiled again at each new length).
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
        weights = self.weights()
        context = int(self.model.backbone.max_sequence_length)
        longest = max(len(p) for p in prompts)
        if longest >= context:
            raise ValueError(
                f"The prompt has {longest} tokens; the model's context is {context}. Shorten it."
            )

        # One row reuses a kept prefix and is right-padded; a batch is left-padded so that
        # every row's next token goes to the same cache slot. Long prompts go in chunks of
        # `MAX_PREFILL_CHUNK`, so that every prompt length shares a few compiled programs.
        cache, start = self._take_cache(prompts, max_new_tokens, min_cache_length)
        cache_length = int(cache[0][0].shape[1])
        chunk_length, padded = _prefill_chunks(longest - start, start)
        if start and start + padded > cache_length:
            # The padded chunk would run past the end of the cache: prefill some of the kept
            # prefix again instead.
            start = max(0, cache_length - padded)
            chunk_length, padded = _prefill_chunks(longest - start, start)
        chunk_length = min(chunk_length, cache_length - start)
        padded = max(padded, chunk_length)
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
        vocab = int(self.model.backbone.vocabulary_size)
        seen = np.zeros((batch, vocab), bool)
        for row, ids in enumerate(prompts):
            seen[row, np.asarray(ids, np.int64) % vocab] = True
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
                self._keep_cache(state.cache, held, batch)

    def kept_cache_length(self) -> int | None:
        """Slots of the cache kept from the last request (None when nothing is kept)."""
        kept = self._kept
        return None if kept is None else kept.length


def _cancelled(event: threading.Event | None) -> bool:
    return event is not None and event.is_set()


# Background compilations must end before the interpreter does: a thread still inside XLA's
# compiler while Python finalizes aborts the process ("terminate called ...", exit status 134).
# At exit no new program is started and the one being compiled is waited for.
_live_engines: weakref.WeakSet = weakref.WeakSet()
_shutting_down = threading.Event()


@atexit.register
def _finish_background_work() -> None:
    _shutting_down.set()
    for engine in list(_live_engines):
        engine.wait_for_precompile()


_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def engine_for(model) -> GenerationEngine:
    """The model's `GenerationEngine` (one per model, made on first use).

    Example:
        >>> engine_for(model) is engine_for(model)  # doctest: +SKIP
        True
    """
    with _engines_lock:
        engine = _engines.get(model)
        if engine is None:
            if keras.backend.backend() == "jax":
                engine = GenerationEngine(model)
            else:
                # jax.jit cannot take torch weights: same interface, eager steps.
                engine = PortableGenerationEngine(model)
            _engines[model] = engine
        return engine
