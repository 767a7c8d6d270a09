"""Captures and edits at the model's hook points, by name: ``run_with_cache`` returns what the
forward computed at each point, ``run_with_hooks`` replaces values on the way. Both run the
model's one forward (`kerasllm_widget.models.llama3_forward`), compiled once per set of names,
edit functions and input shape; an edit's parameters (``Edit(fn, params)``) are traced, so a new
strength, vector or mask recompiles nothing.

Example:
    >>> logits, cache = run_with_cache(model, ids, names=["layers.*.residual_out"])  # doctest: +SKIP
    >>> cache["layers.3.residual_out"].shape  # doctest: +SKIP
    (1, 12, 576)
    >>> zero_mlp = {"layers.2.mlp.out": lambda v: v * 0}
    >>> patched = run_with_hooks(model, ids, edits=zero_mlp)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping

import jax
import keras
import numpy as np

from kerasllm_widget.generation import settings
from kerasllm_widget.models import llama3_forward
from kerasllm_widget.models.llama3_forward import (
    Edit,
    EditSet,
    Hooks,
    expand_hook_names,
    hook_point_names,
)

__all__ = [
    "Edit",
    "causal_inputs",
    "compilations",
    "hook_points",
    "model_program",
    "run_with_cache",
    "run_with_hooks",
]


def hook_points(model) -> list[str]:
    """Every hook point name of ``model``, in forward order.

    Example:
        >>> hook_points(model)[:2]  # doctest: +SKIP
        ['embed', 'layers.0.residual_in']
    """
    return hook_point_names(_backbone(model).num_layers)


def run_with_cache(model, token_ids, names: Iterable[str] | None = None):
    """``(logits, cache)``: float32 logits ``[B, T, vocabulary]`` and a dict from each hook point
    in ``names`` (default: all; ``*`` stands for any layer index) to a numpy array: ``[B, T, D]``
    for states, ``[B, H, T, T]`` for ``layers.{i}.attention.probs``. ``token_ids`` may be 1-D
    (one sequence, still returned with B = 1) or 2-D.

    Example:
        >>> logits, cache = run_with_cache(model, [1, 2, 3], names=["final_norm.out"])  # doctest: +SKIP
    """
    backbone = _backbone(model)
    wanted = hook_point_names(backbone.num_layers) if names is None else names
    return run_with_hooks(model, token_ids, edits=None, names=wanted)


def run_with_hooks(
    model,
    token_ids,
    edits: Mapping[str, Callable | Edit] | None = None,
    names: Iterable[str] | None = None,
):
    """Logits ``[B, T, vocabulary]`` with ``edits`` applied (``{name: fn}``, ``fn(value) ->
    value``, or ``{name: Edit(fn, params)}``; a name may use ``*`` for every layer), and, when
    ``names`` are given, ``(logits, cache)`` as `run_with_cache` returns them.

    Example:
        >>> ablate = {"layers.*.attention.out": lambda v: v * 0}
        >>> logits = run_with_hooks(model, [1, 2, 3], edits=ablate)  # doctest: +SKIP
    """
    backbone = _backbone(model)
    ids = np.asarray(token_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(
            f"token_ids has shape {tuple(np.shape(token_ids))}: pass one sequence [T] or a "
            "batch [B, T] of token ids, at least one token long."
        )
    vocabulary = int(backbone.vocabulary_size)
    flat = settings.check_token_ids(ids.reshape(-1), vocabulary, "token_ids")
    ids = np.asarray(flat, np.int32).reshape(ids.shape)
    capture = tuple(expand_hook_names(names, backbone.num_layers)) if names is not None else ()
    edit_set = EditSet.of(edits, backbone.num_layers)
    program = _program(model, capture, edit_set.spec)
    logits, captured = program(ids, edit_set.params)
    cache = {name: np.asarray(captured[name]) for name in capture}
    logits = np.asarray(logits)
    return (logits, cache) if names is not None else logits


def compilations(model) -> int:
    """How many programs the hook-point analyses (`run_with_cache`, `run_with_hooks`, the logit
    lens, attribution: every `model_program`) have compiled for ``model``.

    Example:
        >>> compilations(model)  # doctest: +SKIP
        2
    """
    table = _programs.get(model)
    return 0 if table is None else table.traces


# ----------------------------------------------------------------------------- programs


def model_program(model, key: Hashable, body: Callable) -> Callable:
    """``body(*args)`` as a program of ``model``, built once per ``key`` (which must name
    everything static in ``body``; shapes come from the arguments). On JAX it is jitted with the
    model's variable values as arguments, the layers reading them through a
    `keras.StatelessScope`, so training or LoRA never leave a stale program; elsewhere it runs
    eagerly, with no autograd graph. Every hook-point analysis is one of these on top of
    `llama3_forward.forward`.

    Example:
        >>> program = model_program(model, ("final",), lambda ids: final_states(ids))  # doctest: +SKIP
        >>> program(np.asarray([[1, 2, 3]], np.int32))  # doctest: +SKIP
    """
    variables = list(model.variables)
    with _lock:
        table = _programs.get(model)
        if table is None:
            table = _programs[model] = _ModelPrograms()
        entry = table.programs.get(key)
        # New variables (LoRA enabled, quantized) need a new program.
        if entry is not None and len(entry[0]) == len(variables):
            if all(a is b for a, b in zip(entry[0], variables, strict=True)):
                return entry[1]

    if keras.backend.backend() == "jax":

        def traced(values, *args):
            table.traces += 1  # runs once per trace: counts compilations
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return body(*args)

        jitted = jax.jit(traced)

        def program(*args):
            return jitted([v.value for v in variables], *args)

    else:

        def program(*args):
            with _no_grad():
                tensors = (
                    keras.ops.convert_to_tensor(a) if isinstance(a, np.ndarray) else a for a in args
                )
                return body(*tensors)

    with _lock:
        table.programs[key] = (variables, program)
    return program


def causal_inputs(batch: int, length: int):
    """``(positions [B, T], attention_mask [B, T, T])`` of unpadded causal sequences, the way
    `llama3_forward.forward` takes them.

    Example:
        >>> positions, mask = causal_inputs(1, 3)  # doctest: +SKIP
    """
    positions = keras.ops.broadcast_to(keras.ops.arange(length)[None], (batch, length))
    causal = keras.ops.arange(length)[:, None] >= keras.ops.arange(length)[None, :]
    return positions, keras.ops.broadcast_to(causal[None], (batch, length, length))


# ----------------------------------------------------------------------------- internals


class _ModelPrograms:
    def __init__(self):
        self.programs: dict = {}
        self.traces = 0


_programs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _backbone(model):
    return getattr(model, "backbone", model)


def _program(model, capture: tuple, edits: tuple):
    """The forward for these captures and edit functions (see `model_program`)."""
    backbone = _backbone(model)

    def run(ids, params):
        hooks = EditSet(edits, params).hooks(capture) or Hooks()
        positions, mask = causal_inputs(*ids.shape)
        hidden, _ = llama3_forward.forward(
            backbone, ids, positions=positions, attention_mask=mask, hooks=hooks
        )
        return llama3_forward.logits(backbone, hidden, hooks=hooks), dict(hooks.captured)

    return model_program(model, ("run_with_hooks", capture, edits), run)


def _no_grad():
    """No autograd graph on torch (it would keep every activation alive)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
