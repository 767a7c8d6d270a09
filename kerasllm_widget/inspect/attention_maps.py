"""Attention probabilities of a token sequence, one layer at a time and only when asked.

The generation path keeps every layer's attention fused. Here a separate, non-cached pass runs
the stack on the fused path and remembers the residual stream entering each layer; asking for a
layer then recomputes only that layer's attention with the explicit softmax. A second layer
(or a second head of the same layer) therefore costs one attention block, not a new forward pass.
The views take one head at a time, already quantised and shrunk to what a heatmap can show
(`AttentionMaps.overview`), then full-resolution regions of it as the user zooms in
(`AttentionMaps.region`); the model view's thumbnails are shrunk where they are computed too.
None of them holds every head in float32.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kerasllm_widget.inspect._compiled import InspectionPass
from kerasllm_widget.inspect._layer_runner import OVERVIEW_CELLS
from kerasllm_widget.inspect._sources import backbone_of
from kerasllm_widget.inspect.quantization import QuantizedArray

Head = int | Literal["mean"] | None


@dataclass(frozen=True)
class AttentionOverview:
    """One head's map shrunk for drawing: cell ``(i, j)`` is the largest weight of query tokens
    ``i*block .. (i+1)*block - 1`` on keys ``j*block .. (j+1)*block - 1`` (the last cells may
    cover fewer tokens).

    The maximum, not the mean: a head that looks one token back draws a one-token line, which a
    mean over a 4 x 4 block would dim to a quarter; the maximum keeps every sharp weight visible
    at the colour it has, and a zoomed region shows how it spreads inside the block.
    """

    codes: QuantizedArray  # [n, n] 8-bit codes, n = ceil(length / block); scale: the map's maximum
    block: int  # tokens per cell side
    row_max: np.ndarray  # [length] uint8: the largest code of each query row at full resolution
    length: int


class AttentionMaps:
    """Lazily computed attention probabilities for one batch of token ids.

    Args:
        model: a `Llama3CausalLM` or `Llama3Backbone`.
        token_ids: ``[T]`` or ``[B, T]`` ints.
        padding_mask: same shape, True on real tokens (default: all real).
        max_cached_layers: how many layers' probabilities to keep (each is ``B*H*T*T`` float32).
        previous: the `AttentionMaps` of an earlier version of the same text (a chat before its
            last reply): the forward pass over the tokens both share is reused, not recomputed.

    Example:
        >>> maps = AttentionMaps(model, tokenizer("The cat sat on the mat"))  # doctest: +SKIP
        >>> maps.head(layer=3, head=0).shape  # doctest: +SKIP
        (6, 6)
    """

    def __init__(
        self,
        model,
        token_ids,
        padding_mask=None,
        max_cached_layers: int = 2,
        previous: AttentionMaps | None = None,
    ):
        self.backbone = backbone_of(model)
        token_ids = np.asarray(token_ids, dtype=np.int32)
        self.batched = token_ids.ndim == 2
        if token_ids.ndim == 1:
            token_ids = token_ids[None]
        if token_ids.ndim != 2 or token_ids.shape[1] == 0:
            raise ValueError(
                f"token_ids must be [T] or [B, T] with T > 0, got shape {token_ids.shape}"
            )
        if padding_mask is None:
            padding_mask = np.ones(token_ids.shape, dtype=bool)
        padding_mask = np.asarray(padding_mask, dtype=bool).reshape(token_ids.shape)
        self.token_ids = token_ids
        self.padding_mask = padding_mask
        earlier = previous._pass if previous is not None else None
        self._pass = InspectionPass(self.backbone, token_ids, padding_mask, previous=earlier)
        self.max_cached_layers = max(1, int(max_cached_layers))
        self._probabilities: OrderedDict[int, np.ndarray] = OrderedDict()
        # The full-resolution codes of the last overview, where they were computed: regions of it
        # are cut out as a view zooms in, with no second pass.
        self._full: tuple[tuple[int, int | str], QuantizedArray, object] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.backbone.transformer_layers)

    @property
    def num_heads(self) -> int:
        return int(self.backbone.num_query_heads)

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[1])

    def prepare_next_layer(self) -> bool:
        """Runs the forward pass one block further, so that a later request for a deeper layer
        costs only its own attention; False once every layer is ready. Meant for idle time.

        Example:
            >>> while maps.prepare_next_layer():  # doctest: +SKIP
            ...     pass
        """
        # The last block's output feeds no attention map: a view that asks for a layer once every
        # layer is ready must not wait behind it.
        if self.prepared_layers >= self.num_layers:
            return False
        return self._pass.advance()

    def warm_up(self) -> bool:
        """Compiles the next program a view of this length runs, unless an earlier text of the
        same padded length did (lengths are padded to buckets); False once all are compiled.
        Meant for idle time, one call per gap.

        Example:
            >>> while maps.warm_up():  # doctest: +SKIP
            ...     pass
        """
        return self._pass.warm_up()

    @property
    def prepared_layers(self) -> int:
        """Layers whose attention costs no forward pass any more."""
        return min(self.num_layers, self._pass.computed_blocks + 1)

    def layer_index(self, layer: int) -> int:
        """``layer`` as an index from 0 (negative layers count from the end); IndexError if out of range."""
        index = int(layer)
        if index < 0:
            index += self.num_layers
        if not 0 <= index < self.num_layers:
            raise IndexError(
                f"layer {layer} is out of range for a model of {self.num_layers} layers"
            )
        return index

    def layer(self, layer: int) -> np.ndarray:
        """Float32 probabilities of every head of one layer: ``[H, T, T]`` (``[B, H, T, T]`` for a
        batch). Each real query's row sums to one; masked keys are exactly zero.

        Example:
            >>> maps.layer(0).sum(-1).round(5).min()  # doctest: +SKIP
            1.0
        """
        index = self.layer_index(layer)
        if index in self._probabilities:
            self._probabilities.move_to_end(index)
        else:
            self._probabilities[index] = self._pass.probabilities(index)
            while len(self._probabilities) > self.max_cached_layers:
                self._probabilities.popitem(last=False)
        result = self._probabilities[index]
        return result if self.batched else result[0]

    def head(self, layer: int, head: Head = "mean") -> np.ndarray:
        """One head's ``[T, T]`` map, or the average over heads with ``head="mean"``.

        Example:
            >>> maps.head(0, 2)[-1].argmax()  # doctest: +SKIP
            0
        """
        if head is None or head == "mean":
            return self.layer(layer).mean(axis=-3)
        h = self._check_head(head)
        return self.layer(layer)[..., h, :, :]

    def _check_head(self, head: int) -> int:
        h = int(head)
        if not -self.num_heads <= h < self.num_heads:
            raise IndexError(f"head {head} is out of range for {self.num_heads} heads")
        return h % self.num_heads

    @property
    def reused_tokens(self) -> int:
        """How many leading tokens' forward pass came from ``previous``."""
        return self._pass.reused_tokens

    def quantized(self, layer: int, head: Head = "mean") -> QuantizedArray:
        """One head's map (or the head average) as 8-bit square-root codes (what the views draw),
        computed for that head only; the first row of a batch.

        Example:
            >>> from kerasllm_widget.inspect import dequantize
            >>> dequantize(maps.quantized(3, head=0)).shape  # doctest: +SKIP
            (6, 6)
        """
        index = self.layer_index(layer)
        if head is None or head == "mean":
            return self._pass.head_codes(index, "mean")
        return self._pass.head_codes(index, self._check_head(head))

    def overview(
        self, layer: int, head: Head = "mean", cells: int = OVERVIEW_CELLS
    ) -> AttentionOverview:
        """One head's map (or the head average) as 8-bit codes shrunk to at most about ``cells``
        cells a side by block maxima, computed where the map is (the first row of a batch).

        Example:
            >>> view = maps.overview(3, head=0, cells=512)  # doctest: +SKIP
            >>> view.codes.codes.shape, view.block  # 2,048 tokens  # doctest: +SKIP
            ((512, 512), 4)
        """
        index = self.layer_index(layer)
        key = (index, "mean" if head is None or head == "mean" else self._check_head(head))
        block = self._pass.overview_block(cells)
        pooled, row_max, full = self._pass.head_overview(index, key[1], block)
        self._full = (key, pooled, full)
        return AttentionOverview(pooled, block, row_max, self.length)

    def region(
        self, layer: int, head: Head, rows: tuple[int, int], cols: tuple[int, int]
    ) -> QuantizedArray:
        """Full-resolution codes of queries ``rows[0]..rows[1]-1`` on keys ``cols[0]..cols[1]-1``
        of one head's map, on the scale of the whole map (what a zoomed view draws). Cut from the
        last `overview` of the same layer and head when there is one.

        Example:
            >>> maps.region(3, 0, rows=(100, 200), cols=(0, 150)).codes.shape  # doctest: +SKIP
            (100, 150)
        """
        index = self.layer_index(layer)
        key = (index, "mean" if head is None or head == "mean" else self._check_head(head))
        (r0, r1), (c0, c1) = (int(v) for v in rows), (int(v) for v in cols)
        if not (0 <= r0 < r1 <= self.length and 0 <= c0 < c1 <= self.length):
            raise ValueError(
                f"region rows {r0}..{r1}, cols {c0}..{c1} is not inside a map of {self.length} tokens"
            )
        if self._full is None or self._full[0] != key:
            self.overview(index, key[1])
        _, pooled, full = self._full
        codes = np.ascontiguousarray(np.asarray(full)[r0:r1, c0:c1])
        return QuantizedArray(codes, pooled.scale, pooled.gamma)

    def thumbnails(self, layer: int, size: int = 48) -> np.ndarray:
        """Every head of one layer shrunk to at most ``size x size`` (block maximum): ``[H, s, s]``;
        the first row of a batch.

        Example:
            >>> maps.thumbnails(0, size=32).shape  # doctest: +SKIP
            (9, 32, 32)
        """
        return self._pass.thumbnails(self.layer_index(layer), max(1, int(size)))

    def query_row(self, layer: int, query: int, head: Head = "mean") -> np.ndarray:
        """What one token attends to: the ``query``-th row of a head's map (``[S]``).

        Example:
            >>> maps.query_row(0, query=-1).sum().round(5)  # doctest: +SKIP
            1.0
        """
        matrix = self.head(layer, head)
        if self.batched:
            matrix = matrix[0]
        return matrix[int(query)]


def attention(
    model,
    token_ids,
    layer: int,
    head: Head = None,
    padding_mask=None,
) -> np.ndarray:
    """Attention probabilities of one layer from the explicit-softmax path, as numpy.

    Returns ``[H, T, T]`` for ``head=None``, ``[T, T]`` for one head or ``head="mean"``; a leading
    batch axis when ``token_ids`` is ``[B, T]``. Row ``t`` is how query ``t`` spreads its attention
    over keys ``0..t``. To look at several layers of the same text, keep an `AttentionMaps`.

    Example:
        >>> ids = model.preprocessor.tokenizer("The cat sat")  # doctest: +SKIP
        >>> attention(model, ids, layer=0, head=0).shape  # doctest: +SKIP
        (3, 3)
    """
    maps = AttentionMaps(model, token_ids, padding_mask=padding_mask, max_cached_layers=1)
    if head is None:
        return maps.layer(layer)
    return maps.head(layer, head)
