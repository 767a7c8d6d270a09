"""Pick JAX as the Keras backend unless the user already chose one.

Keras reads ``KERAS_BACKEND`` once, at its first import, so this module must be imported before
``keras`` anywhere in the package (``kerasllm_widget/__init__.py`` does it first).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
