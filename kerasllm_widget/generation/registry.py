"""One generation engine per model, made on first use: the compiled `GenerationEngine` on JAX,
the eager `PortableGenerationEngine` on other backends. Engines hold their model weakly, so this
registry never keeps a model alive."""

from __future__ import annotations

import threading
import weakref

import keras

from kerasllm_widget.generation.engine import GenerationEngine
from kerasllm_widget.generation.portable_engine import PortableGenerationEngine

__all__ = ["engine_for"]


_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def engine_for(model) -> GenerationEngine:
    """The model's `GenerationEngine` (one per model, made on first use).

    Example:
        >>> engine_for(model) is engine_for(model)  # doctest: +SKIP
        True
    """
    with _engines_lock:
        engine = _engines.get(model)
        if engine is None:
            if keras.backend.backend() == "jax":
                engine = GenerationEngine(model)
            else:
                # jax.jit cannot take torch weights: same interface, eager steps.
                engine = PortableGenerationEngine(model)
            _engines[model] = engine
        return engine
