"""The layer contracts of pyproject.toml ([tool.importlinter]) hold, and catch a planted cycle.

`make lint` runs `lint-imports`; these tests run it too, on the real tree and on a copy of the
package with one import added that breaks a contract (the imports that used to close cycles,
written inside functions as they were: import-linter reads those too).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGE = REPOSITORY / "kerasllm_widget"


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the contracts of pyproject.toml, on the package found in ``folder``
    (import-linter puts the working directory first on the import path)."""
    command = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())",
        "--no-cache",
    ]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    result = lint_imports(REPOSITORY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# (module, the import planted in it, a piece of the contract it breaks)
PLANTED = {
    # The native kernels asked the engine for its cache folder, while the engine runs the kernels.
    "kernels-import-the-engine": (
        "kernels/cpu.py",
        "from kerasllm_widget.generation.engine import default_cache_dir",
        "kerasllm_widget.kernels is not allowed to import kerasllm_widget.generation",
    ),
    # The converter built the backbone whose `from_preset` calls the converter.
    "converter-imports-the-model": (
        "checkpoints/convert.py",
        "from kerasllm_widget.models.llama3_backbone import Llama3Backbone",
        "kerasllm_widget.checkpoints is not allowed to import kerasllm_widget.models",
    ),
    # The task model calls up into generation; generation importing it back closes a cycle.
    "generation-imports-the-task-model": (
        "generation/api.py",
        "from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM",
        "kerasllm_widget.generation is not allowed to import kerasllm_widget.models.llama3_causal_lm",
    ),
    # chat, inspect and training are independent of one another.
    "chat-imports-inspect": (
        "chat/chat_state.py",
        "from kerasllm_widget.inspect import distributions",
        "kerasllm_widget.chat is not allowed to import kerasllm_widget.inspect",
    ),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_a_planted_import_breaks_a_contract(tmp_path, case):
    module, statement, broken = PLANTED[case]
    shutil.copytree(
        PACKAGE,
        tmp_path / "kerasllm_widget",
        ignore=shutil.ignore_patterns("__pycache__", "static"),
    )
    shutil.copy(REPOSITORY / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path).returncode == 0  # the copy, as it is, passes
    target = tmp_path / "kerasllm_widget" / module
    # Inside a function, where the old cycles hid.
    planted = f"\n\ndef _planted():\n    {statement}\n\n    return None\n"
    target.write_text(target.read_text(encoding="utf-8") + planted, encoding="utf-8")

    result = lint_imports(tmp_path)
    output = " ".join((result.stdout + result.stderr).split())  # the report wraps long lines
    assert result.returncode != 0, output
    assert "BROKEN" in output
    assert broken in output
    assert f"kerasllm_widget.{module[:-3].replace('/', '.')}" in output
