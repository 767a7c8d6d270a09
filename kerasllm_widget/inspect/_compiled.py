"""The inspection pass: one non-cached forward over a batch, its residual streams kept.

`InspectionPass` runs the backbone block by block on the compiled per-layer steps of
`_layer_runner` (one program per padded length serves every layer) and keeps the residual stream
entering each block as it is computed, so that a view can ask any layer for its attention maps
without running the blocks below it again. A pass over a sequence that shares a prefix with an
earlier one (a chat that grew by one reply) takes the earlier pass's streams for the chunks that
lie wholly in the prefix instead of computing them.
"""

from __future__ import annotations

import numpy as np

from kerasllm_widget.inspect._layer_runner import (
    OVERVIEW_CELLS,
    bucket_length,
    chunks,
    runner_for,
)
from kerasllm_widget.inspect.quantization import QuantizedArray
from kerasllm_widget.models.llama3_backbone import (
    causal_attention_mask,
    positions_from_padding_mask,
)


class InspectionPass:
    """One non-cached pass over a batch: the residual stream entering each block, kept as computed.

    Args:
        backbone: a `Llama3Backbone`.
        token_ids: ``[B, T]`` int32.
        padding_mask: ``[B, T]`` bool.
        previous: an earlier pass over a sequence sharing a prefix with this one (one row, all
            real tokens): its residual streams for the shared tokens are reused.

    Example:
        >>> run = InspectionPass(model.backbone, ids[None], np.ones((1, len(ids)), bool))  # doctest: +SKIP
        >>> run.probabilities(3).shape  # doctest: +SKIP
        (1, 9, 12, 12)
    """

    def __init__(self, backbone, token_ids: np.ndarray, padding_mask: np.ndarray, previous=None):
        self.backbone = backbone
        self.token_ids = np.asarray(token_ids, np.int32)
        self.padding_mask = np.asarray(padding_mask, bool)
        self.length = int(token_ids.shape[1])
        self.padded_length = bucket_length(self.length)
        extra = self.padded_length - self.length
        padded_mask = np.pad(padding_mask, ((0, 0), (0, extra)))
        self._padded_ids = np.pad(token_ids, ((0, 0), (0, extra)))
        self._positions = positions_from_padding_mask(padded_mask)
        self._attention_mask = causal_attention_mask(padded_mask)
        self._runner = runner_for(backbone)
        self._inputs: list = []
        self.reused_tokens = 0
        self._known: list = []  # a previous pass's residual streams, padded to this length
        if previous is not None:
            self._take_prefix(previous)

    def _take_prefix(self, previous: InspectionPass) -> None:
        if (
            previous.backbone is not self.backbone
            or not self._runner.compiled
            or self.token_ids.shape[0] != 1
            or previous.token_ids.shape[0] != 1
            or not (self.padding_mask.all() and previous.padding_mask.all())
        ):
            return
        shared = min(self.length, previous.length)
        differ = np.flatnonzero(self.token_ids[0, :shared] != previous.token_ids[0, :shared])
        prefix = int(differ[0]) if differ.size else shared
        if prefix < chunks(self.padded_length)[0][1]:  # no chunk lies wholly in the prefix
            return
        import jax.numpy as jnp

        self.reused_tokens = prefix
        rows = min(previous.padded_length, self.padded_length)
        for stream in previous._inputs:
            known = stream[:, :rows]
            self._known.append(jnp.pad(known, ((0, 0), (0, self.padded_length - rows), (0, 0))))

    @property
    def num_layers(self) -> int:
        return len(self.backbone.transformer_layers)

    def layer_input(self, index: int):
        """The residual stream entering block ``index`` (``index == num_layers``: after the last)."""
        if not self._inputs:
            self._inputs.append(self.backbone.token_embedding(self._padded_ids))
        while len(self._inputs) <= index:
            i = len(self._inputs) - 1
            reuse = i + 1 < len(self._known)
            x = self._runner.block(
                i,
                self._inputs[i],
                self._positions,
                self._attention_mask,
                known=self._known[i + 1] if reuse else None,
                start=self.reused_tokens if reuse else 0,
            )
            if reuse:
                self._known[i + 1] = None  # each layer's copy is needed once
            self._inputs.append(x)
        return self._inputs[index]

    @property
    def computed_blocks(self) -> int:
        """How many blocks' inputs are known (a layer below this costs no forward pass)."""
        return max(0, len(self._inputs) - 1)

    def advance(self) -> bool:
        """Runs one more block of the fused forward pass; False once every block has run."""
        if len(self._inputs) > self.num_layers:
            return False
        x = self.layer_input(len(self._inputs))
        if self._runner.compiled:  # done when it returns, not queued: progress means ready
            x.block_until_ready()
        return True

    def warm_up(self) -> bool:
        """Compiles the next of the programs a view of this length runs (the head average, one
        head, a block), unless an earlier pass of the same padded length did; False once all
        are. One program per call, so that a caller can answer a request in between.

        Example:
            >>> while run.warm_up():  # doctest: +SKIP
            ...     pass
        """
        runner = self._runner
        if not runner.compiled:
            return False
        done = runner.warm_lengths.setdefault(self.padded_length, set())
        block = self.overview_block(OVERVIEW_CELLS)
        for step in ("mean", "head", "block"):
            if step in done:
                continue
            if step == "mean":
                self.head_overview(0, "mean", block)
            elif step == "head":
                self.head_overview(0, 0, block)
            else:
                while self.computed_blocks == 0:
                    self.advance()
            done.add(step)
            return True
        return False

    def probabilities(self, index: int) -> np.ndarray:
        """Block ``index``'s attention probabilities ``[B, H, T, T]`` on the real length."""
        probabilities = self._runner.probabilities(
            index, self.layer_input(index), self._positions, self._attention_mask
        )
        return np.ascontiguousarray(probabilities[..., : self.length, : self.length])

    def head_codes(self, index: int, head) -> QuantizedArray:
        """Block ``index``'s map of one head or ``"mean"`` (batch row 0) as 8-bit codes."""
        return self._runner.head_codes(
            index, self.layer_input(index), self._positions, self._attention_mask, self.length, head
        )

    def overview_block(self, cells: int) -> int:
        """Tokens per side of an overview cell so that a map has at most ``cells`` cells a side.
        Taken from the padded length, so every text of one bucket runs the same program."""
        return max(1, -(-self.padded_length // max(1, int(cells))))

    def head_overview(self, index: int, head, block: int):
        """Block ``index``'s map of one head or ``"mean"`` shrunk to ``block`` maxima; see
        `LayerRunner.head_overview`."""
        return self._runner.head_overview(
            index,
            self.layer_input(index),
            self._positions,
            self._attention_mask,
            self.length,
            head,
            block,
        )

    def thumbnails(self, index: int, size: int) -> np.ndarray:
        """Block ``index``'s heads (batch row 0) shrunk by block maxima to at most ``size``."""
        return self._runner.thumbnails(
            index, self.layer_input(index), self._positions, self._attention_mask, self.length, size
        )

    def logits(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Float32 logits ``[B, stop - start, V]`` of positions ``start..stop`` (the final norm and
        the output projection run on those positions only: ``T x V`` floats can be a gigabyte)."""
        stop = self.length if stop is None else stop
        hidden = self.layer_input(self.num_layers)[:, start:stop]
        hidden = self.backbone.layer_norm(hidden)
        logits = self.backbone.token_embedding(hidden, reverse=True)
        return np.asarray(logits, dtype=np.float32)
