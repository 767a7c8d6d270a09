"""What ``Llama3CausalLM.compile()`` uses when it is told nothing: AdamW and a token-mean loss."""

from __future__ import annotations

from typing import Any

import keras

DEFAULT_LEARNING_RATE = 5e-5
DEFAULT_WEIGHT_DECAY = 0.01


def default_optimizer(
    learning_rate: float = DEFAULT_LEARNING_RATE, weight_decay: float = DEFAULT_WEIGHT_DECAY
) -> keras.optimizers.Optimizer:
    """AdamW, with norm scales and biases left out of weight decay (decaying them only hurts).

    Example:
        >>> default_optimizer().name
        'adamw'
    """
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["scale", "bias"])
    return optimizer


def default_loss() -> keras.losses.Loss:
    """Sparse cross-entropy from logits, averaged over the weighted tokens.

    ``mean_with_sample_weight`` divides by the sum of the token weights rather than by
    ``batch * length``, so the loss is a true mean over real (or assistant) tokens: padding and
    masked prompt tokens neither add loss nor dilute it.

    Example:
        >>> default_loss().reduction
        'mean_with_sample_weight'
    """
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )


def default_weighted_metrics() -> list[keras.metrics.Metric]:
    """Next-token accuracy over the weighted tokens."""
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def compile_arguments(
    optimizer: Any = "auto", loss: Any = "auto", weighted_metrics: Any = "auto"
) -> dict[str, Any]:
    """Replaces each ``"auto"`` with its default; everything else passes through.

    Example:
        >>> sorted(compile_arguments(optimizer="sgd"))
        ['loss', 'optimizer', 'weighted_metrics']
    """
    return {
        "optimizer": default_optimizer() if optimizer == "auto" else optimizer,
        "loss": default_loss() if loss == "auto" else loss,
        "weighted_metrics": default_weighted_metrics()
        if weighted_metrics == "auto"
        else weighted_metrics,
    }
