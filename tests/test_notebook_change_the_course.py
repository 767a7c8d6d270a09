"""notebooks/change_the_course.ipynb runs from top to bottom in a real kernel, offline: a branch
of a reply, a steered reply that differs from the unsteered one, and SmolLM2 before and after a
two-epoch LoRA fine-tune compared token by token."""

from __future__ import annotations

import re

import pytest
from notebook_support import ROOT, run_notebook

pytestmark = pytest.mark.slow


def printed(cell) -> str:
    """What the cell printed (not the loading progress bars on stderr)."""
    return "".join(
        output.get("text", "")
        for output in cell.get("outputs", [])
        if output.get("name") == "stdout"
    )


def test_change_the_course_notebook(smollm2_gguf):
    import nbformat

    notebook = run_notebook("change_the_course.ipynb")
    (ROOT / "test-artifacts").mkdir(exist_ok=True)  # the executed notebook, to read
    nbformat.write(notebook, ROOT / "test-artifacts" / "change_the_course.ipynb")
    check_outputs(notebook)


def check_outputs(notebook) -> None:
    # The notebook's own cells (after the set-up cell that installs what is missing).
    cells = [c for c in notebook.cells if c.cell_type == "code" and c.get("id") != "setup"]
    first_reply = printed(cells[0]).strip()
    branched = printed(cells[1])
    assert "2 versions of the reply, showing #1" in branched
    assert re.search(r"branch: How", branched)
    assert f"shown again: {first_reply}" in branched

    steering = printed(cells[2])
    plain = re.search(r"unsteered: (.*)", steering).group(1)
    steered = re.search(r"steered  : (.*)", steering).group(1)
    assert plain != steered

    trained = printed(cells[4])
    assert "Kera" in trained.split("sample:")[1]
    mean_kl = float(re.search(r"mean KL from the base model: ([\d.e-]+)", trained).group(1))
    assert mean_kl > 0.01  # the adapters moved the model away from its base
    compared = printed(cells[5])
    change = float(re.search(r"mean change over the answer: ([+-][\d.]+)", compared).group(1))
    assert change > 0.5  # the new answer is far more likely after the fine-tune
    assert any(
        "CompareView" in str(output.get("data", {}).get("text/plain", ""))
        for output in cells[6].get("outputs", [])
    )
