"""The key/value cache an engine keeps between requests, and what it holds.

After a request the engine keeps its cache with the token ids in its slots; the next single-row
request that starts with the same tokens (the next turn of a chat) reuses them and prefills
only what is new. `CacheStore` is that one kept cache, behind a lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading

import jax
import numpy as np

from kerasllm_widget.generation.buckets import cache_length_for, prefill_chunks
from kerasllm_widget.generation.programs import grow_cache, zero_cache

__all__ = ["CacheRecord", "CacheStore", "KeptCache", "edits_signature"]


def edits_signature(edits) -> tuple:
    """What the keys of a cache depend on besides the tokens: the edits' functions and the
    bytes of their numbers (an `EditSet`)."""
    if not edits:
        return ()
    digests = tuple(
        hashlib.sha1(np.ascontiguousarray(np.asarray(p)).tobytes()).hexdigest()
        for p in jax.tree_util.tree_leaves(edits.params)
    )
    return (edits.spec, digests)


@dataclasses.dataclass
class KeptCache:
    """A cache kept from the last request: per layer ``(keys, values)`` ``[B, S, kv, hd]``."""

    cache: list
    token_ids: list[int]  # what slots [0, len) hold (batch 1 only; empty for batches)
    batch: int
    length: int
    dtype: str
    signature: tuple = ()  # the edits the keys were computed under (`edits_signature`)


@dataclasses.dataclass(frozen=True)
class CacheRecord:
    """What the engine's last request did with its cache: the public record the cache views read.

    Set when the request has its cache (``held_ids`` None while it runs) and again when the cache
    is kept. ``reused_tokens`` is the prefix of ``prompt_ids`` taken from the kept cache; the
    rest of the prompt was computed by prefill, and the reply by decode.

    Example:
        >>> record = CacheRecord.of([(np.zeros((1, 8, 2, 4), np.float32),) * 2], [5, 6, 7], 2)
        >>> record.bytes_per_token, record.capacity, record.reused_tokens
        (64, 8, 2)
    """

    prompt_ids: tuple[int, ...]  # the request's prompt (batch 1; empty for batches)
    reused_tokens: int
    capacity: int  # slots allocated
    batch: int
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str
    bytes_per_token: int  # keys and values of one slot of one row, every layer
    held_ids: tuple[int, ...] | None = None  # what the kept cache holds (None while running)

    @classmethod
    def of(cls, cache: list, prompts: list[list[int]], reused: int) -> CacheRecord:
        """The record of a request about to run on ``cache`` (per layer ``(keys, values)``)."""
        keys = cache[0][0]
        batch, capacity, kv_heads, head_dim = (int(n) for n in keys.shape)
        # From the arrays themselves (shape and dtype), not from the config.
        per_token = sum(
            int(np.prod(a.shape[2:])) * np.dtype(a.dtype).itemsize for layer in cache for a in layer
        )
        return cls(
            prompt_ids=tuple(prompts[0]) if len(prompts) == 1 else (),
            reused_tokens=int(reused),
            capacity=capacity,
            batch=batch,
            layers=len(cache),
            kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=str(np.dtype(keys.dtype)),
            bytes_per_token=per_token,
        )


class CacheStore:
    """Holds at most one `KeptCache` for an engine and hands out caches for requests.

    Example:
        >>> store = CacheStore(backbone, "float32")  # doctest: +SKIP
        >>> cache, reused = store.take([[1, 2, 3]], max_new_tokens=8)  # doctest: +SKIP
    """

    def __init__(self, backbone, dtype) -> None:
        self._backbone = backbone
        self.dtype = str(dtype)
        self._kept: KeptCache | None = None
        self._lock = threading.Lock()

    @property
    def kept(self) -> KeptCache | None:
        """The kept cache (None when nothing is kept)."""
        return self._kept

    def length_for(self, needed: int) -> int:
        """The cache length a request needing ``needed`` slots gets."""
        return cache_length_for(needed, int(self._backbone.max_sequence_length))

    def take(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        min_cache_length: int = 0,
        signature: tuple = (),
    ) -> tuple[list, int]:
        """A cache for this request and how many leading prompt tokens it already holds.

        A single row whose prompt starts with the tokens of the kept cache reuses them (the next
        turn of a chat prefills only the new turn); otherwise a cache of the right bucket is
        made, reusing the kept buffers when they have that shape. The kept cache is handed over
        (nothing is kept until `keep`).
        """
        with self._lock:
            kept, self._kept = self._kept, None
        batch = len(prompts)
        if kept is not None and (kept.batch != batch or kept.dtype != self.dtype):
            kept = None
        reuse = 0
        # Keys computed under other edits (another steering vector) hold other values.
        if kept is not None and batch == 1 and kept.token_ids and kept.signature == signature:
            prompt = prompts[0]
            limit = min(len(prompt) - 1, len(kept.token_ids))  # prefill needs >= 1 token
            while reuse < limit and prompt[reuse] == kept.token_ids[reuse]:
                reuse += 1
        longest = max(len(p) for p in prompts)
        needed = max(
            reuse + prefill_chunks(longest - reuse, reuse)[1] + max_new_tokens, min_cache_length
        )
        length = self.length_for(needed)
        if reuse and kept.length >= min(needed, length):
            return kept.cache, reuse
        if reuse:  # a longer chat: the kept keys move into a larger cache
            return grow_cache(kept.cache, length), reuse
        if kept is not None and kept.length == length:
            return kept.cache, 0  # same shape: reuse the buffers
        del kept  # free the old buffers before the new ones are made
        backbone = self._backbone
        shape = (batch, length, backbone.num_key_value_heads, backbone.head_dim)
        return zero_cache(layers=backbone.num_layers, shape=shape, dtype=self.dtype), 0

    def keep(self, cache, token_ids: list[int], batch: int, signature: tuple = ()) -> None:
        """Keeps ``cache`` holding ``token_ids`` in its first slots (batch 1) for the next request."""
        with self._lock:
            self._kept = KeptCache(
                cache=cache,
                token_ids=token_ids if batch == 1 else [],
                batch=batch,
                length=int(cache[0][0].shape[1]),
                dtype=self.dtype,
                signature=signature,
            )

    def clear(self) -> None:
        """Frees the kept cache (its memory)."""
        with self._lock:
            self._kept = None
