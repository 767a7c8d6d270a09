"""Where the package keeps files between sessions.

The generation engine (JAX's compiled programs) and the native CPU kernel (its built library)
both keep files under one folder. The helper sits here, below both, so that the kernels need not
import the engine for a path while the engine imports the kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/kerasllm_widget`` (``~/.cache/kerasllm_widget`` when it is unset).

    Example:
        >>> cache_root().name
        'kerasllm_widget'
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kerasllm_widget"
