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

__all__ = ["CacheStore", "KeptCache", "edits_signature"]


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
