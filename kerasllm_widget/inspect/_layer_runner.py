"""Compiled per-layer steps for the inspection pass (`_compiled.InspectionPass`).

Run op by op, a 30-layer model takes seconds per layer at a few thousand tokens, most of it
dispatch and per-op compilation. All decoder blocks of a backbone have the same structure, so one
compiled program per sequence length serves every layer: block 0 is traced once and the weights
of block ``i`` are passed in as arguments (Keras' `StatelessScope`). Sequence lengths are rounded
up to a bucket and padded on the right with masked tokens, which leaves every real query's
attention unchanged (a causal query never sees a later key), so typing a few more tokens does not
compile a new program.

A block runs its queries in chunks of `CHUNK` rows through the decoder's own cached path, each
chunk against the keys up to its end only: a causal map's upper triangle is never computed, which
halves the attention work of long sequences. The same chunks let a pass reuse another pass's
residual streams for a shared prefix (a chat that grew by one reply): chunks that lie wholly in
the prefix are copied, not computed.

The views ask for one head (or the head average) at a time: `LayerRunner.head_codes` computes
only that head's softmax and returns it already quantised, so a 2,048-token map costs one
``T x T`` matrix product, not every head's probabilities in float32. What leaves the program is
the map shrunk to block maxima (`LayerRunner.head_overview`, 512 x 512 codes at 2,048 tokens:
256 KB instead of 4 MB); the full-resolution codes stay where they were computed until a view
zooms in and asks for a region of them.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

from kerasllm_widget.inspect.quantization import (
    QuantizedArray,
    block_max,
    downsample_max,
    quantize,
)
from kerasllm_widget.models.llama3_forward import explicit_probabilities, project_qkv
from kerasllm_widget.models.rotary_embedding import rotary_tables

_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
CHUNK = 256  # query rows per chunk of a block (bucket lengths past 256 are multiples of it)
_CODE_LEVELS = 255  # the views' maps: 8-bit square-root codes (see quantization.py)
# The most cells a side of the map a view is first sent: about the heatmap's pixels (440 CSS px).
OVERVIEW_CELLS = 512


def bucket_length(length: int) -> int:
    """The padded length used for a sequence of ``length`` tokens (multiples of 64, then 256).

    Example:
        >>> bucket_length(5), bucket_length(300), bucket_length(2048)
        (64, 512, 2048)
    """
    step = 64 if length <= 256 else CHUNK
    return max(step, -(-length // step) * step)


def chunks(length: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` row ranges a block of ``length`` rows runs in.

    Example:
        >>> chunks(64), chunks(512)
        ([(0, 64)], [(0, 256), (256, 512)])
    """
    size = CHUNK if length > CHUNK else length
    return [(start, min(length, start + size)) for start in range(0, length, size)]


class LayerRunner:
    """The block step and the attention steps of one backbone, compiled once per length."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.template = backbone.transformer_layers[0]
        self._variables = [self.template.variables]
        for layer in backbone.transformer_layers[1:]:
            if [v.shape for v in layer.variables] != [v.shape for v in self.template.variables]:
                raise ValueError("decoder blocks differ in structure; cannot share one program")
            self._variables.append(layer.variables)
        attention = self.template.attention
        self.num_heads = int(attention.num_query_heads)
        self._groups = self.num_heads // int(attention.num_key_value_heads)
        self.compiled = keras.backend.backend() == "jax"
        # Padded length -> which of the views' programs are compiled for it.
        self.warm_lengths: dict[int, set[str]] = {}
        if self.compiled:
            import jax

            self._block = jax.jit(self._block_step)
            self._probabilities = jax.jit(self._probabilities_step)
            self._head_codes = jax.jit(self._head_codes_step, static_argnames=("mean", "block"))
            self._thumbnails = jax.jit(self._thumbnails_step, static_argnames=("block",))

    def _scope(self, values):
        return keras.StatelessScope(
            state_mapping=list(zip(self.template.variables, values, strict=True))
        )

    # ---- traced steps (block 0's layers, block i's weights) ----

    def _project(self, x, positions, queries: bool):
        """Queries and keys (``queries``) or keys and values of the attention's input, as the
        model's forward computes them before it attends (`llama3_forward.project_qkv`)."""
        attention = self.template.attention
        rope = rotary_tables(positions, attention.inverse_frequencies)
        normed = self.template.attention_norm(x)
        return project_qkv(attention, normed, rope, parts="qk" if queries else "kv")

    def _block_step(self, values, x, known, positions, attention_mask, start):
        import jax
        from keras import ops

        with self._scope(values):
            keys, cached_values = self._project(x, positions, queries=False)
            outputs = []
            for begin, end in chunks(x.shape[1]):

                def compute(begin=begin, end=end):
                    out, _, _ = self.template(
                        x[:, begin:end],
                        positions=positions[:, begin:end],
                        attention_mask=attention_mask[:, begin:end, :end],
                        cache=(keys[:, :end], cached_values[:, :end]),
                        cache_index=begin,
                    )
                    return out

                # A chunk wholly inside the shared prefix is already known.
                outputs.append(
                    jax.lax.cond(
                        end > start, compute, lambda begin=begin, end=end: known[:, begin:end]
                    )
                )
            return ops.concatenate(outputs, axis=1)

    def _probabilities_step(self, values, x, positions, attention_mask):
        with self._scope(values):
            decoder = self.template
            _, _, probabilities = decoder.attention(
                decoder.attention_norm(x),
                positions=positions,
                attention_mask=attention_mask,
                return_probabilities=True,
            )
        return probabilities

    def _head_probabilities(self, query, key, allowed, head):
        """One head's ``[T, T]`` probabilities of batch row 0, as the model's explicit path
        computes them (scores cast to float32, then scaled; masked keys exactly zero)."""
        import jax

        q = jax.lax.dynamic_slice_in_dim(query[:1], head, 1, axis=2)
        k = jax.lax.dynamic_slice_in_dim(key[:1], head // self._groups, 1, axis=2)
        return explicit_probabilities(q, k, allowed[None], kv_heads=1)[0, 0]

    def _rows_of(self, values, x, positions, attention_mask, length, head_fn):
        """``head_fn(probabilities_of)`` under block ``values``, with rows past ``length`` zeroed."""
        import jax.numpy as jnp

        with self._scope(values):
            query, key = self._project(x, positions, queries=True)
        real_rows = jnp.arange(x.shape[1]) < length
        allowed = attention_mask[0] & real_rows[:, None]
        return head_fn(lambda head: self._head_probabilities(query, key, allowed, head))

    def _head_codes_step(
        self, values, x, positions, attention_mask, length, head, mean: bool, block: int
    ):
        import jax
        import jax.numpy as jnp

        def pick(probabilities_of):
            if not mean:
                return probabilities_of(head)
            total = jax.lax.fori_loop(
                0,
                self.num_heads,
                lambda h, acc: acc + probabilities_of(h),
                jnp.zeros((x.shape[1], x.shape[1]), jnp.float32),
            )
            return total / self.num_heads

        probabilities = self._rows_of(values, x, positions, attention_mask, length, pick)
        scale = probabilities.max()
        normalised = probabilities / jnp.where(scale > 0, scale, 1.0)
        codes = jnp.rint(jnp.sqrt(normalised) * _CODE_LEVELS).astype(jnp.uint8)
        row_max = codes.max(axis=1)
        if block == 1:
            return codes, scale, row_max, codes
        # The code is monotonic in the probability, so the block maximum of the codes is the
        # code of the block maximum: the same as pooling the float map, then quantising.
        side = -(-x.shape[1] // block)
        extra = side * block - x.shape[1]
        pooled = jnp.pad(codes, ((0, extra), (0, extra))).reshape(side, block, side, block)
        return pooled.max(axis=(1, 3)), scale, row_max, codes

    def _thumbnails_step(self, values, x, positions, attention_mask, length, block: int):
        import jax
        import jax.numpy as jnp

        padded = -(-x.shape[1] // block) * block
        side = padded // block

        def shrink(probabilities):
            extra = padded - probabilities.shape[0]
            probabilities = jnp.pad(probabilities, ((0, extra), (0, extra)))
            return probabilities.reshape(side, block, side, block).max(axis=(1, 3))

        return self._rows_of(
            values,
            x,
            positions,
            attention_mask,
            length,
            lambda probabilities_of: jax.lax.map(
                lambda h: shrink(probabilities_of(h)), jnp.arange(self.num_heads)
            ),
        )

    # ---- calls ----

    def _values(self, index: int):
        return [v.value for v in self._variables[index]]

    def block(self, index: int, x, positions, attention_mask, known=None, start: int = 0):
        """Block ``index`` on the fused path: the residual stream after it. Rows below ``start``
        may be taken from ``known`` (the same block's output for a shared prefix)."""
        if not self.compiled:
            layer = self.backbone.transformer_layers[index]
            return layer(x, positions=positions, attention_mask=attention_mask)[0]
        known = x if known is None else known
        return self._block(
            self._values(index), x, known, positions, attention_mask, np.int32(start)
        )

    def probabilities(self, index: int, x, positions, attention_mask) -> np.ndarray:
        """Block ``index``'s attention probabilities ``[B, H, T, S]`` (float32 numpy), from the
        model's own explicit-softmax path."""
        if not self.compiled:
            layer = self.backbone.transformer_layers[index]
            result = layer.attention(
                layer.attention_norm(x),
                positions=positions,
                attention_mask=attention_mask,
                return_probabilities=True,
            )[2]
        else:
            result = self._probabilities(self._values(index), x, positions, attention_mask)
        return np.asarray(result, dtype=np.float32)

    def head_codes(
        self, index: int, x, positions, attention_mask, length: int, head
    ) -> QuantizedArray:
        """One head's map (``head="mean"``: the head average) of batch row 0, ``[length, length]``,
        as 8-bit square-root codes relative to its maximum."""
        return self.head_overview(index, x, positions, attention_mask, length, head, block=1)[0]

    def head_overview(
        self, index: int, x, positions, attention_mask, length: int, head, block: int
    ) -> tuple[QuantizedArray, np.ndarray, object]:
        """One head's map (or ``"mean"``) of batch row 0 as 8-bit codes shrunk to the maximum of
        each ``block x block`` block: ``(codes [n, n] with n = ceil(length / block), the largest
        code of each of the ``length`` query rows, the full codes)``. The full codes are left
        where they were computed (a device array; ``[padded, padded]``) for a later region."""
        mean = head == "mean"
        side = -(-length // block)
        if not self.compiled:
            probabilities = self.probabilities(index, x, positions, attention_mask)[
                0, :, :length, :length
            ]
            full = quantize(
                probabilities.mean(0) if mean else probabilities[int(head)], bits=8, gamma=0.5
            )
            pooled = QuantizedArray(block_max(full.codes, block), full.scale, full.gamma)
            return pooled, full.codes.max(axis=1), full.codes
        pooled, scale, row_max, full = self._head_codes(
            self._values(index),
            x,
            positions,
            attention_mask,
            np.int32(length),
            np.int32(0 if mean else head),
            mean=mean,
            block=int(block),
        )
        codes = np.ascontiguousarray(np.asarray(pooled)[:side, :side])
        row_max = np.ascontiguousarray(np.asarray(row_max)[:length])
        return QuantizedArray(codes, float(scale), 0.5), row_max, full

    def thumbnails(
        self, index: int, x, positions, attention_mask, length: int, size: int
    ) -> np.ndarray:
        """Every head of batch row 0 shrunk to at most ``size x size`` by block maxima: ``[H, s, s]``."""
        block = max(1, -(-length // size))
        side = -(-length // block)
        if not self.compiled:
            probabilities = self.probabilities(index, x, positions, attention_mask)[
                0, :, :length, :length
            ]
            return downsample_max(probabilities, size)
        result = self._thumbnails(
            self._values(index), x, positions, attention_mask, np.int32(length), block=block
        )
        return np.ascontiguousarray(np.asarray(result, dtype=np.float32)[:, :side, :side])


def runner_for(backbone) -> LayerRunner:
    """The (cached) `LayerRunner` of a backbone.

    Example:
        >>> runner_for(model.backbone) is runner_for(model.backbone)  # doctest: +SKIP
        True
    """
    runner = _RUNNERS.get(backbone)
    if runner is None:
        runner = LayerRunner(backbone)
        _RUNNERS[backbone] = runner
    return runner
