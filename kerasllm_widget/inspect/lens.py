"""The logit lens: what the model would say next if it stopped after each decoder layer.

Every layer's residual stream (``layers.{i}.residual_out``) goes through the final norm and the
output projection, exactly as the last one does, so the last row is the model's own
next-token distribution. One jitted program on top of the forward: the full
``[layers, T, vocabulary]`` probabilities never exist at once (30 x 2,048 x 49,152 floats is
12 GB for SmolLM2); rows of the stacked residuals are projected a chunk at a time and reduced
there to the top ``k``, the rank of the token that came next and the entropy.

Example:
    >>> lens = logit_lens(model, ids, top_k=5)  # doctest: +SKIP
    >>> lens.top_ids.shape, lens.target_rank.shape  # doctest: +SKIP
    ((30, 12, 5), (30, 11))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from keras import ops

from kerasllm_widget.generation import settings
from kerasllm_widget.inspect._sources import backbone_of, one_sequence
from kerasllm_widget.inspect.hooks import causal_inputs, model_program
from kerasllm_widget.models import llama3_forward
from kerasllm_widget.models.llama3_forward import Hooks

__all__ = ["LogitLens", "logit_lens"]

# Logits of at most this many floats exist at once (64 MB): 336 rows of SmolLM2's 49,152-token
# vocabulary, 128 of Llama 3's 128,256.
_CHUNK_ELEMENTS = 1 << 24


@dataclass
class LogitLens:
    """The logit lens of one sequence of ``T`` tokens through a model of ``L`` layers.

    Row ``i`` is the residual after decoder layer ``i`` read through the final norm and the
    output projection; the last row is the model's own prediction.

    - ``top_ids`` ``[L, T, k]``, ``top_probs`` ``[L, T, k]``: the most likely next tokens at
      each position, most likely first;
    - ``target_rank`` ``[L, T - 1]``: the rank (0 = top) of the token that actually came next
      (``token_ids[t + 1]``) at position ``t``; ``target_prob`` ``[L, T - 1]``: its probability;
    - ``final_rank``, ``final_prob`` ``[L]``: the same for the last position, which has no next
      token, of the model's own choice there (``top_ids[-1, -1, 0]``);
    - ``entropy`` ``[L, T]``: of the whole distribution, in nats.

    Example:
        >>> lens.top_probs[-1, -1, 0]  # doctest: +SKIP
        0.71
    """

    token_ids: np.ndarray  # [T]
    top_ids: np.ndarray  # [L, T, k] int32
    top_probs: np.ndarray  # [L, T, k] float32
    target_rank: np.ndarray  # [L, T - 1] int32
    entropy: np.ndarray  # [L, T] float32
    vocabulary_size: int
    target_prob: np.ndarray | None = None  # [L, T - 1] float32
    final_rank: np.ndarray | None = None  # [L] int32
    final_prob: np.ndarray | None = None  # [L] float32

    @property
    def num_layers(self) -> int:
        return int(self.top_ids.shape[0])

    def compact(self) -> LogitLens:
        """The same lens in 16-bit arrays, for the wire: probabilities and entropies as float16
        (3 significant digits), ids and ranks as uint16 where the vocabulary fits in 16 bits
        (SmolLM2's 49,152 does; Llama 3's 128,256 keeps int32).

        Example:
            >>> lens.compact().top_probs.dtype  # doctest: +SKIP
            dtype('float16')
        """
        index = np.uint16 if self.vocabulary_size <= 1 << 16 else np.int32
        return replace(
            self,
            token_ids=self.token_ids.astype(index),
            top_ids=self.top_ids.astype(index),
            top_probs=self.top_probs.astype(np.float16),
            target_rank=self.target_rank.astype(index),
            entropy=self.entropy.astype(np.float16),
            target_prob=_as(self.target_prob, np.float16),
            final_rank=_as(self.final_rank, index),
            final_prob=_as(self.final_prob, np.float16),
        )

    def text_table(
        self,
        label: Callable[[int], str] = str,
        width: int = 8,
        top_k: int | None = None,
    ) -> str:
        """A plain-text table: one row per layer, one column per position, the top next token
        in each cell (``*`` where it is the token that actually came next); under it the last
        position's top ``top_k`` (default all kept) at every layer. ``label`` turns an id into
        text (a tokenizer's piece).

        Example:
            >>> print(lens.text_table(lambda i: piece(tokenizer, i)))  # doctest: +SKIP
        """

        def cell(text: str) -> str:
            text = text.replace("\n", "⏎")
            return (text if len(text) <= width else text[: width - 1] + "…").ljust(width)

        length = len(self.token_ids)
        margin = max(len("layer"), len(str(self.num_layers - 1)))
        lines = [
            "input".rjust(margin) + " │ " + " ".join(cell(label(int(i))) for i in self.token_ids),
            "layer".rjust(margin) + " │ " + "top next token (* where it came next)",
            "─" * margin + "─┼─" + "─" * ((width + 1) * length - 1),
        ]
        for layer in range(self.num_layers):
            cells = []
            for t in range(length):
                hit = t + 1 < length and self.target_rank[layer, t] == 0
                cells.append(cell(("*" if hit else "") + label(int(self.top_ids[layer, t, 0]))))
            lines.append(f"{layer:>{margin}} │ " + " ".join(cells))
        k = self.top_ids.shape[-1] if top_k is None else min(top_k, self.top_ids.shape[-1])
        lines.append(f"\nafter the last token, top {k} at each layer (probability):")
        for layer in range(self.num_layers):
            shown = " · ".join(
                f"{label(int(i))} {float(p):.3f}"
                for i, p in zip(
                    self.top_ids[layer, -1, :k], self.top_probs[layer, -1, :k], strict=True
                )
            )
            lines.append(f"{layer:>{margin}} │ {shown}")
        return "\n".join(lines)


def logit_lens(model, token_ids, top_k: int = 5) -> LogitLens:
    """The logit lens of ``token_ids`` (one sequence, 1-D) through ``model`` (a causal LM or a
    backbone): for every layer and position the top ``top_k`` next tokens and their
    probabilities, the rank of the token that came next, and the entropy. One forward pass and
    one projection per layer, in one compiled program per (length, ``top_k``).

    Example:
        >>> lens = logit_lens(model, [1, 415, 5565, 302], top_k=3)  # doctest: +SKIP
        >>> lens.top_ids[-1, -1]  # the model's own top 3 after the last token  # doctest: +SKIP
        array([4068, 264, 1522], dtype=int32)
    """
    backbone = backbone_of(model)
    vocabulary = int(backbone.vocabulary_size)
    ids = one_sequence(token_ids, vocabulary)
    top_k = settings.check_count(top_k, "top_k", 1, vocabulary)
    length, layers = ids.size, int(backbone.num_layers)
    rows = max(1, min(layers * length, _CHUNK_ELEMENTS // vocabulary))
    program = model_program(model, ("logit_lens", top_k, rows), _lens_body(backbone, top_k, rows))
    next_ids = np.append(ids[1:], 0).astype(np.int32)  # the last position has no next token
    results = (np.asarray(a) for a in program(ids[None], next_ids))
    top_ids, top_probs, rank, entropy, target_prob, final_rank, final_prob = results
    return LogitLens(
        token_ids=ids,
        top_ids=top_ids.astype(np.int32),
        top_probs=top_probs.astype(np.float32),
        target_rank=rank[:, : length - 1].astype(np.int32),
        entropy=entropy.astype(np.float32),
        vocabulary_size=vocabulary,
        target_prob=target_prob[:, : length - 1].astype(np.float32),
        final_rank=final_rank.astype(np.int32),
        final_prob=final_prob.astype(np.float32),
    )


def _as(array: np.ndarray | None, dtype) -> np.ndarray | None:
    return None if array is None else array.astype(dtype)


def _lens_body(backbone, top_k: int, rows: int):
    """``(ids [1, T], next_ids [T]) -> (top_ids, top_probs [L, T, k], rank, entropy,
    target_prob [L, T], final_rank, final_prob [L])``."""
    layers = int(backbone.num_layers)
    names = [f"layers.{i}.residual_out" for i in range(layers)]

    def project(chunk):
        states, targets = chunk  # [rows, D], [rows]
        logits = llama3_forward.logits(backbone, backbone.layer_norm(states[None]))[0]
        log_z = ops.logsumexp(logits, axis=-1, keepdims=True)
        top_logits, top_ids = ops.top_k(logits, top_k)
        target_logit = ops.take_along_axis(logits, targets[:, None], axis=-1)
        rank = ops.sum(ops.cast(logits > target_logit, "int32"), axis=-1)
        log_p = logits - log_z
        entropy = -ops.sum(ops.exp(log_p) * log_p, axis=-1)
        target_prob = ops.exp(target_logit - log_z)[:, 0]
        return ops.cast(top_ids, "int32"), ops.exp(top_logits - log_z), rank, entropy, target_prob

    def body(ids, next_ids):
        length = ids.shape[1]
        hooks = Hooks(capture=names)
        positions, mask = causal_inputs(1, length)
        llama3_forward.forward(backbone, ids, positions=positions, attention_mask=mask, hooks=hooks)
        # [L * T, D] rows, padded to whole chunks (the padding's results are dropped).
        states = ops.concatenate([hooks.captured[name][0] for name in names], axis=0)
        targets = ops.tile(ops.cast(next_ids, "int32"), (layers,))
        total = layers * length
        chunks = -(-total // rows)
        pad = chunks * rows - total
        if pad:
            states = ops.pad(states, ((0, pad), (0, 0)))
            targets = ops.pad(targets, ((0, pad),))
        states = ops.reshape(states, (chunks, rows, ops.shape(states)[-1]))
        targets = ops.reshape(targets, (chunks, rows))
        # A loop (jax.lax.map on JAX): one chunk's logits live at a time.
        results = ops.map(project, (states, targets))
        top_ids, top_probs, rank, entropy, target_prob = (
            ops.reshape(ops.reshape(r, (chunks * rows, *r.shape[2:]))[:total], (layers, length, -1))
            if r.ndim == 3
            else ops.reshape(ops.reshape(r, (chunks * rows,))[:total], (layers, length))
            for r in results
        )
        # The last position has no next token: follow the model's own choice there instead, its
        # rank and probability at every layer (one more projection of L rows).
        last = ops.stack([hooks.captured[name][0][length - 1] for name in names])
        choice = ops.tile(ops.reshape(top_ids[layers - 1, length - 1, 0], (1,)), (layers,))
        _, _, final_rank, _, final_prob = project((last, choice))
        return top_ids, top_probs, rank, entropy, target_prob, final_rank, final_prob

    return body
