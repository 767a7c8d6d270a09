"""Compiling ahead of need: the programs a longer chat will use, compiled on a background
thread while the user reads and types, so the turn that needs them does not wait for a compiler.
Background work ends before the interpreter does."""

from __future__ import annotations

import atexit
import threading
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from kerasllm_widget.generation.buckets import CONTINUATION_CHUNKS, stop_slots
from kerasllm_widget.generation.programs import DecodeState, phase
from kerasllm_widget.generation.samplers import Sampler, SamplerParams
from kerasllm_widget.generation.stopping import stop_token_ids_of
from kerasllm_widget.models.llama3_forward import EditSet

__all__ = ["AheadOfTime", "register_engine"]


class AheadOfTime:
    """`GenerationEngine`'s ahead-of-time compilation (its programs, keys and lock are the
    engine's own; this part of the class lives here to keep the request path short)."""

    def precompile(
        self,
        cache_length: int,
        sampler: Sampler | None = None,
        num_alternatives: int = 0,
        batch: int = 1,
        background: bool = True,
        stop_count: int | None = None,
        edits: EditSet | None = None,
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
        edits = edits or EditSet()
        decode_key = self._key(
            "decode", batch, cache_length, 1, plan, num_alternatives, slots, edits.spec
        )
        prefill_keys = {
            chunk: self._key(
                "prefill", batch, cache_length, chunk, plan, num_alternatives, slots, edits.spec
            )
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
            phase.name = "background_"
            try:
                weights = jax.tree.map(
                    lambda w: jax.ShapeDtypeStruct(np.shape(w), jnp.result_type(w)),
                    (*self.weights(), edits),
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
                phase.name = ""
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

    def _keep_program(self, generation: int, key, program) -> bool:
        """Files a program `precompile` compiled, unless the variables changed since it began
        (its program would take the old variables: a stale executable)."""
        with self._lock:
            if generation != self._generation:
                return False
            self._executables[key] = program
            return True


# Background compilations must end before the interpreter does: a thread still inside XLA's
# compiler while Python finalizes aborts the process ("terminate called ...", exit status 134).
# At exit no new program is started and the one being compiled is waited for.
_live_engines: weakref.WeakSet = weakref.WeakSet()
_shutting_down = threading.Event()


def register_engine(engine: AheadOfTime) -> None:
    """Makes ``engine``'s background compilations end before the interpreter does."""
    _live_engines.add(engine)


@atexit.register
def _finish_background_work() -> None:
    _shutting_down.set()
    for engine in list(_live_engines):
        engine.wait_for_precompile()
