"""Pick JAX as the Keras backend unless the user already chose one, and say so aloud when Keras
already runs a backend this package is not tested on.

Keras reads ``KERAS_BACKEND`` once, at its first import, so this module must be imported before
``keras`` anywhere in the package (``kerasllm_widget/__init__.py`` does it first). Where Keras was
imported earlier (Colab imports it with TensorFlow at start-up), only a restart changes the backend.

Example:
    >>> import kerasllm_widget  # doctest: +SKIP
    UserWarning: Keras already runs on the 'tensorflow' backend ... restart the kernel ...
"""

import os
import sys
import warnings

SUPPORTED = ("jax", "torch")

os.environ.setdefault("KERAS_BACKEND", "jax")


def running_backend() -> str:
    """The backend Keras runs (or will run) on: Keras' own answer when it is already imported,
    else ``KERAS_BACKEND`` (which Keras reads at its first import)."""
    keras = sys.modules.get("keras")
    backend = getattr(getattr(keras, "backend", None), "backend", None)
    if callable(backend):
        return str(backend())
    return os.environ["KERAS_BACKEND"]


def unsupported_backend_message(backend: str) -> str:
    """What to do when Keras runs on ``backend`` ("" for a supported one)."""
    if backend in SUPPORTED:
        return ""
    return (
        f"Keras already runs on the {backend!r} backend, which kerasllm_widget is not built or "
        "tested for (it runs on JAX, or on PyTorch). Keras picks its backend once, when it is "
        "first imported, so restart the kernel and set the backend before anything imports "
        "Keras: run `import os; os.environ['KERAS_BACKEND'] = 'jax'` in the first cell (or "
        "start Jupyter with KERAS_BACKEND=jax), then import kerasllm_widget."
    )


_message = unsupported_backend_message(running_backend())
if _message:
    warnings.warn(_message, UserWarning, stacklevel=2)
