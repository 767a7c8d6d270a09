"""Every notebook opens with the same set-up cell (`notebooks/setup_cell.py`), which installs what
the notebook needs in Colab or a fresh Python and does nothing where it is all installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_notebook_opens_with_the_setup_cell():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "setup_cells.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (
        f"{result.stdout}run `python scripts/setup_cells.py` to add the set-up cell"
    )


def test_setup_cell_installs_nothing_where_everything_is_installed(tmp_path):
    # pip pointed at nothing: any install the cell tried would fail the run.
    env = dict(os.environ, PYTHONPATH=str(ROOT), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path))
    env.pop("KERAS_BACKEND", None)
    code = (ROOT / "notebooks" / "setup_cell.py").read_text() + (
        "\nprint('backend', os.environ['KERAS_BACKEND'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "everything is already installed" in result.stdout
    assert "backend jax" in result.stdout
