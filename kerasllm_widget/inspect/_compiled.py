"""Compiled per-layer steps for the inspection pass.

Run op by op, a 30-layer model takes seconds per layer at a few thousand tokens, most of it
dispatch and per-op compilation. All decoder blocks of a backbone have the same structure, so one
compiled program per sequence length serves every layer: block 0 is traced once and the weights
of block ``i`` are passed in as arguments (Keras' `StatelessScope`). Sequence lengths are rounded
up to a bucket and padded on the right with masked tokens, which leaves every real query's
attention unchanged (a causal query never sees a later key), so typing a few more tokens does not
compile a new program.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bucket_length(length: int) -> int:
    """The padded length used for a sequence of ``length`` tokens (multiples of 64, then 256).

    Example:
        >>> bucket_length(5), bucket_length(300), bucket_length(2048)
        (64, 512, 2048)
    """
    step = 64 if length <= 256 else 256
    return max(step, -(-length // step) * step)


class LayerRunner:
    """The fused block step and the explicit attention step of one backbone, compiled once."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.template = backbone.transformer_layers[0]
        self._variables = [self.template.variables]
        for layer in backbone.transformer_layers[1:]:
            if [v.shape for v in layer.variables] != [v.shape for v in self.template.variables]:
                raise ValueError("decoder blocks differ in structure; cannot share one program")
            self._variables.append(layer.variables)
        self.compiled = keras.backend.backend() == "jax"
        if self.compiled:
            import jax

            self._block = jax.jit(self._block_step)
            self._probabilities = jax.jit(self._probabilities_step)

    def _scope(self, values):
        return keras.StatelessScope(state_mapping=list(zip(self.template.variables, values, strict=True)))

    def _block_step(self, values, x, positions, attention_mask):
        with self._scope(values):
            out, _, _ = self.template(x, positions=positions, attention_mask=attention_mask)
        return out

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

    def _values(self, index: int):
        return [v.value for v in self._variables[index]]

    def block(self, index: int, x, positions, attention_mask):
        """Block ``index`` on the fused path: the residual stream after it."""
        if not self.compiled:
            layer = self.backbone.transformer_layers[index]
            return layer(x, positions=positions, attention_mask=attention_mask)[0]
        return self._block(self._values(index), x, positions, attention_mask)

    def probabilities(self, index: int, x, positions, attention_mask) -> np.ndarray:
        """Block ``index``'s attention probabilities ``[B, H, T, S]`` (float32 numpy)."""
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


class InspectionPass:
    """One non-cached pass over a batch: the residual stream entering each block, kept as computed.

    Args:
        backbone: a `Llama3Backbone`.
        token_ids: ``[B, T]`` int32.
        padding_mask: ``[B, T]`` bool.

    Example:
        >>> run = InspectionPass(model.backbone, ids[None], np.ones((1, len(ids)), bool))  # doctest: +SKIP
        >>> run.probabilities(3).shape  # doctest: +SKIP
        (1, 9, 12, 12)
    """

    def __init__(self, backbone, token_ids: np.ndarray, padding_mask: np.ndarray):
        from kerasllm_widget.models.llama3_backbone import (
            causal_attention_mask,
            positions_from_padding_mask,
        )

        self.backbone = backbone
        self.length = int(token_ids.shape[1])
        extra = bucket_length(self.length) - self.length
        padded_mask = np.pad(padding_mask, ((0, 0), (0, extra)))
        self._padded_ids = np.pad(token_ids, ((0, 0), (0, extra)))
        self._positions = positions_from_padding_mask(padded_mask)
        self._attention_mask = causal_attention_mask(padded_mask)
        self._runner = runner_for(backbone)
        self._inputs: list = []

    @property
    def num_layers(self) -> int:
        return len(self.backbone.transformer_layers)

    def layer_input(self, index: int):
        """The residual stream entering block ``index`` (``index == num_layers``: after the last)."""
        if not self._inputs:
            self._inputs.append(self.backbone.token_embedding(self._padded_ids))
        while len(self._inputs) <= index:
            i = len(self._inputs) - 1
            x = self._runner.block(i, self._inputs[i], self._positions, self._attention_mask)
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
        self.layer_input(len(self._inputs))
        return True

    def probabilities(self, index: int) -> np.ndarray:
        """Block ``index``'s attention probabilities ``[B, H, T, T]`` on the real length."""
        probabilities = self._runner.probabilities(
            index, self.layer_input(index), self._positions, self._attention_mask
        )
        return np.ascontiguousarray(probabilities[..., : self.length, : self.length])

    def logits(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Float32 logits ``[B, stop - start, V]`` of positions ``start..stop`` (the final norm and
        the output projection run on those positions only: ``T x V`` floats can be a gigabyte)."""
        stop = self.length if stop is None else stop
        hidden = self.layer_input(self.num_layers)[:, start:stop]
        hidden = self.backbone.layer_norm(hidden)
        logits = self.backbone.token_embedding(hidden, reverse=True)
        return np.asarray(logits, dtype=np.float32)


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
