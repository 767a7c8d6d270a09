"""`bench/widget.py` still runs end to end (a smoke run: one short reply through the widget in
JupyterLab and one through the engine alone), so the benchmark of the widget's cost cannot rot
unnoticed. Its figures are printed, never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_widget_benchmark_smoke_run(smollm2_gguf):
    if H.chromium_path() is None:
        pytest.fail("chromium is not installed (apt-get install chromium); `make test-deps` does")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "widget.py"), "--smoke", "--timeout", "600"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("time to first token (s)", "decode tokens per second", "targets:"):
        assert line in result.stdout, line
