"""Which earlier tokens a prediction rests on: one score per token of the prefix, for the
log-probability the model gives a target token at a position.

- ``grad_x_input``: the gradient of that log-probability with respect to each input embedding
  (the ``embed`` hook point's value), dotted with the embedding;
- ``integrated_gradients`` (Sundararajan et al. 2017): the same dot product with the gradient
  averaged along the straight path from the all-zero embedding, midpoint rule over ``steps``;
- ``attention_rollout`` (Abnar & Zuidema 2020): head-averaged attention with the residual added
  (``0.5 A + 0.5 I``, rows renormalised), multiplied through the layers, read at the position
  that predicts the target.

The gradients come from `jax.grad` over the model's one forward with an edit on ``embed`` that
puts a traced input in place of the looked-up embeddings. Each method is one compiled program per
sequence length: the target position and id are traced, so asking about another token of the
same text recompiles nothing (the positions after the target cannot reach it through the causal
mask, and get exact zeros). Integrated gradients runs its steps in batches, one call of the
program each, so that a long run can report its progress and be stopped between two batches.

Example:
    >>> scores = attribution(model, ids, target_position=5)  # doctest: +SKIP
    >>> scores.shape  # one per token before position 5  # doctest: +SKIP
    (5,)
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from kerasllm_widget.generation import settings
from kerasllm_widget.generation.settings import GenerationSettingError
from kerasllm_widget.inspect._sources import backbone_of, one_sequence
from kerasllm_widget.inspect.hooks import causal_inputs, model_program
from kerasllm_widget.models import llama3_forward
from kerasllm_widget.models.llama3_forward import Hooks

__all__ = ["ATTRIBUTION_METHODS", "attribution", "steps_per_batch"]

ATTRIBUTION_METHODS = ("grad_x_input", "integrated_gradients", "attention_rollout")
_GRADIENT_METHODS = ("grad_x_input", "integrated_gradients")

# Integrated gradients runs as many steps in one pass as keep about this many bytes of
# activations for the backward pass (SmolLM2 at T = 512 keeps ~1.1 GB a step on a CPU, where
# every layer's attention logits and probabilities are kept: one step at a time there; short
# texts batch many). Per-layer rematerialisation (jax.checkpoint, or a custom_vjp that ties the
# recomputation to the cotangent with an optimization barrier) did not lower XLA:CPU's
# temporaries: 4.45 GB -> 4.37 / 4.25 GB for gradient x input at T = 1,024; not kept.
_GRADIENT_BUDGET_BYTES = 1 << 30


def attribution(
    model,
    token_ids,
    target_position: int,
    target_id: int | None = None,
    method: str = "grad_x_input",
    steps: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Scores ``[target_position]`` (float32), one per token of ``token_ids[:target_position]``,
    for the log-probability of ``target_id`` (default ``token_ids[target_position]``) as the
    token after that prefix. ``method``: ``"grad_x_input"``, ``"integrated_gradients"``
    (``steps`` midpoints from the zero embedding) or ``"attention_rollout"``. The gradient
    methods need the JAX backend.

    ``progress(done, total)``, if given, is called after each batch of gradient steps
    (`steps_per_batch`; gradient x input is one step); an exception it raises ends the run
    there and propagates, which is how a caller stops a long integrated-gradients run.

    Example:
        >>> ids = tokenizer("The capital of France is Paris")  # doctest: +SKIP
        >>> attribution(model, ids, target_position=len(ids) - 1).round(2)  # doctest: +SKIP
        array([0.02, 0.11, 0.05, 0.83, 0.07], dtype=float32)
    """
    backbone = backbone_of(model)
    vocabulary = int(backbone.vocabulary_size)
    if method not in ATTRIBUTION_METHODS:
        raise GenerationSettingError(
            "method", method, "use one of " + ", ".join(repr(m) for m in ATTRIBUTION_METHODS)
        )
    ids = one_sequence(token_ids, vocabulary)
    length = ids.size
    if length < 2:
        raise ValueError(
            f"token_ids holds {length} token: attribution needs a prefix and a target, at least "
            "two tokens."
        )
    position = settings.check_count(target_position, "target_position", 1, length - 1)
    target = int(ids[position]) if target_id is None else target_id
    target = settings.check_count(target, "target_id", 0, vocabulary - 1)
    if method in _GRADIENT_METHODS and keras.backend.backend() != "jax":
        raise NotImplementedError(
            f"method={method!r} takes gradients with jax.grad and needs the JAX backend "
            f"(KERAS_BACKEND=jax); this session runs {keras.backend.backend()!r}. "
            "method='attention_rollout' runs on any backend."
        )
    if method == "attention_rollout":
        program = model_program(model, ("attribution.rollout",), _rollout_body(backbone))
        scores = program(ids[None], np.int32(position))
        return np.asarray(scores, np.float32)[:position]
    if method == "grad_x_input":
        steps, batch, midpoints = 1, 1, np.ones(1, np.float32)
    else:
        steps = settings.check_count(steps, "steps", 1, 4096)
        batch = steps_per_batch(backbone, length, steps)
        midpoints = (np.arange(steps, dtype=np.float32) + 0.5) / steps
    alphas = np.zeros(-(-steps // batch) * batch, np.float32)  # padding: weight 0 below
    alphas[:steps] = midpoints
    weights = (np.arange(alphas.size) < steps).astype(np.float32)
    program = model_program(model, ("attribution.gradient",), _gradient_body(backbone))
    total = np.zeros(length, np.float64)
    for start in range(0, alphas.size, batch):
        chunk = slice(start, start + batch)
        scores = program(
            ids[None], np.int32(position), np.int32(target), alphas[chunk], weights[chunk]
        )
        total += np.asarray(scores, np.float32)
        if progress is not None:
            progress(min(start + batch, steps), steps)
    return (total / steps).astype(np.float32)[:position]


def steps_per_batch(backbone, length: int, steps: int) -> int:
    """How many of ``steps`` integration steps share one forward and backward pass at length
    ``length``: their activations kept for the backward pass within the budget, the steps
    spread evenly over the passes (8 steps, at most 6 a pass, run as 2 x 4, not 6 + 2 padded).

    Example:
        >>> steps_per_batch(smollm2.backbone, 512, 32)  # ~1.1 GB a step on a CPU  # doctest: +SKIP
        1
    """
    most = max(1, min(steps, _GRADIENT_BUDGET_BYTES // _bytes_per_step(backbone, length)))
    passes = -(-steps // most)
    return int(-(-steps // passes))


def _bytes_per_step(backbone, length: int) -> int:
    """Activations one sequence keeps for the backward pass, roughly: every layer's attention
    logits and probabilities, MLP and norm inputs, in float32 (XLA:CPU's own count for SmolLM2
    at T = 512: ~45 MB a layer)."""
    per_layer = length * (
        2 * int(backbone.num_query_heads) * length
        + 3 * int(backbone.intermediate_dim)
        + 8 * int(backbone.hidden_dim)
    )
    return 4 * int(backbone.num_layers) * per_layer


def _gradient_body(backbone):
    """``(ids [1, T], position, target, alphas [B], weights [B]) -> [T]``: the sum over one
    batch of steps of ``weight * grad(log p(target | ids[:position]))`` at ``alpha *
    embeddings``, dotted with the embeddings. ``grad_x_input`` is one step with alpha 1."""
    import jax
    import jax.numpy as jnp

    def body(ids, position, target, alphas, weights):
        length, batch = ids.shape[1], alphas.shape[0]
        embeddings = llama3_forward.embed(backbone.token_embedding, ids)  # [1, T, D]
        batch_ids = jnp.broadcast_to(ids, (batch, length))
        positions, mask = causal_inputs(batch, length)

        def log_prob(inputs):  # inputs [B, T, D] -> weighted sum of log p
            hooks = Hooks(edits={"embed": (lambda value, e: e, inputs)})
            hidden, _ = llama3_forward.forward(
                backbone, batch_ids, positions=positions, attention_mask=mask, hooks=hooks
            )
            last = jax.lax.dynamic_index_in_dim(hidden, position - 1, axis=1, keepdims=False)
            log_p = jax.nn.log_softmax(llama3_forward.logits(backbone, last), axis=-1)
            return jnp.sum(log_p[:, target] * weights)

        inputs = (alphas[:, None, None] * embeddings).astype(embeddings.dtype)
        gradient = jax.grad(log_prob)(inputs).astype("float32").sum(0)
        return jnp.sum(gradient * embeddings[0].astype("float32"), axis=-1)

    return body


def _rollout_body(backbone):
    """``(ids [1, T], position) -> [T]``: row ``position - 1`` of the attention rollout
    ``Â_L @ ... @ Â_1`` with ``Â = rownorm(0.5 * mean_heads(A) + 0.5 * I)``."""
    layers = int(backbone.num_layers)
    names = [f"layers.{i}.attention.probs" for i in range(layers)]

    def body(ids, position):
        length = ids.shape[1]
        hooks = Hooks(capture=names)
        positions, mask = causal_inputs(1, length)
        llama3_forward.forward(backbone, ids, positions=positions, attention_mask=mask, hooks=hooks)
        identity = ops.eye(length, dtype="float32")
        # e_r @ Â_L @ ... @ Â_1, taken from the left: vectors, never a [T, T] product.
        row = ops.cast(ops.arange(length) == position - 1, "float32")
        for name in reversed(names):
            mixed = 0.5 * ops.mean(ops.cast(hooks.captured[name][0], "float32"), axis=0)
            mixed = mixed + 0.5 * identity
            mixed = mixed / ops.sum(mixed, axis=-1, keepdims=True)
            row = ops.matmul(row, mixed)
        return row

    return body
