"""Attention probabilities of a token sequence, one layer at a time and only when asked.

The generation path keeps every layer's attention fused. Here a separate, non-cached pass runs
the stack on the fused path and remembers the residual stream entering each layer; asking for a
layer then recomputes only that layer's attention with the explicit softmax. A second layer
(or a second head of the same layer) therefore costs one attention block, not a new forward pass.
The views take one head at a time, already quantised (`AttentionMaps.quantized`), and the
model view's thumbnails are shrunk where they are computed; neither holds every head in float32.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np

from kerasllm_widget.inspect._compiled import InspectionPass
from kerasllm_widget.inspect._sources import backbone_of
from kerasllm_widget.inspect.quantization import QuantizedArray

Head = int | Literal["mean"] | None


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
