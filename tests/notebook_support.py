"""Runs a notebook of notebooks/ from top to bottom in a real kernel (the notebook tests share it)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(name: str):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    env_path = os.environ.get("PYTHONPATH", "")
    # The kernel imports the package from this checkout even where it is not pip-installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env_path]))
    try:
        NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT / "notebooks")}},
        ).execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
    return notebook
