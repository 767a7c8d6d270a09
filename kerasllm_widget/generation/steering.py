"""Steering: a vector added to the residual stream after a decoder layer, at every position of
the prompt and the reply, inside the compiled engine.

``steering={layer: vector}`` becomes an edit at ``layers.{layer}.residual_out`` whose function
is fixed (`add_to_residual`) and whose number is the vector, traced: a new vector or strength
recompiles nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kerasllm_widget.models.llama3_forward import Edit, EditSet

__all__ = ["add_to_residual", "steering_edits"]


def add_to_residual(value, vector):
    """``value + vector`` in the value's dtype (the edit `steering_edits` makes)."""
    return value + vector.astype(value.dtype)


def steering_edits(model, steering: Mapping[int, Any] | None) -> EditSet:
    """The `EditSet` for ``steering`` (``{layer: vector [hidden]}``; the vector already scaled
    by its strength). Refuses a layer outside the model or a vector of the wrong size.

    Example:
        >>> edits = steering_edits(model, {6: 4.0 * vector})  # doctest: +SKIP
    """
    if not steering:
        return EditSet()
    if not isinstance(steering, Mapping):
        raise TypeError(
            f"steering={type(steering).__name__}: give {{layer: vector}}, e.g. "
            "{6: 4.0 * inspect.steering_vector(model, positive, negative, layer=6)}."
        )
    backbone = getattr(model, "backbone", model)
    layers, hidden = int(backbone.num_layers), int(backbone.hidden_dim)
    edits = {}
    for layer, vector in sorted(steering.items(), key=lambda item: str(item[0])):
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"steering layer {layer!r}: layers are whole numbers 0..{layers - 1}")
        if not 0 <= layer < layers:
            raise ValueError(
                f"steering layer {layer} is not a decoder layer of this model: use 0..{layers - 1}."
            )
        array = np.asarray(vector, dtype=np.float32)
        if array.shape != (hidden,):
            raise ValueError(
                f"steering[{layer}] has shape {array.shape}; it must be one vector of the "
                f"model's hidden size ({hidden},)."
            )
        if not np.isfinite(array).all():
            raise ValueError(f"steering[{layer}] holds NaN or infinity: use finite numbers.")
        edits[f"layers.{int(layer)}.residual_out"] = Edit(add_to_residual, array)
    return EditSet.of(edits, layers)
