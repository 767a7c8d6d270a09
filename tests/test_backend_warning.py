"""Keras already running a backend this package is not built for (Colab imports Keras with
TensorFlow at start-up) is said aloud: `import kerasllm_widget` warns to restart with
KERAS_BACKEND=jax. Each case runs in a fresh interpreter, as a user's kernel starts. (The native
kernel being off is said aloud too: tests/test_cpu_kernel.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_AFTER_KERAS = r"""
import json, warnings
warnings.simplefilter("always")
import keras
with warnings.catch_warnings(record=True) as caught:
    import kerasllm_widget
print(json.dumps([str(w.message) for w in caught]))
"""


def _run(code: str, **env: str) -> object:
    environ = {k: v for k, v in os.environ.items() if k not in ("CXX", "KERAS_BACKEND")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_keras_already_on_another_backend_says_restart_with_jax():
    (message,) = _run(IMPORT_AFTER_KERAS, KERAS_BACKEND="numpy")
    assert "'numpy' backend" in message and "restart the kernel" in message
    assert "KERAS_BACKEND" in message and "'jax'" in message


def test_keras_already_on_a_supported_backend_is_quiet():
    assert _run(IMPORT_AFTER_KERAS, KERAS_BACKEND="jax") == []
