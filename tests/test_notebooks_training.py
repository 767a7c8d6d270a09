"""notebooks/finetune_lora.ipynb runs from top to bottom in a real kernel, offline, and teaches
SmolLM2 its new name."""

from __future__ import annotations

import pytest
from notebook_support import ROOT, run_notebook

pytestmark = pytest.mark.slow


def cell_text(cell) -> str:
    return "".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for output in cell.get("outputs", [])
    )


def test_finetune_lora_notebook_teaches_the_model_its_name(smollm2_gguf):
    import nbformat

    notebook = run_notebook("finetune_lora.ipynb")
    (ROOT / "test-artifacts").mkdir(exist_ok=True)  # the executed notebook, to read
    nbformat.write(notebook, ROOT / "test-artifacts" / "finetune_lora.ipynb")
    # The notebook's own cells (after the set-up cell that installs what is missing).
    cells = [c for c in notebook.cells if c.cell_type == "code" and c.get("id") != "setup"]
    before = cell_text(cells[0])
    assert "Kera" not in before  # the untrained model has another name
    # The chat panel with its Training tab was displayed.
    assert any(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        and "ChatWidget" in str(output["data"].get("text/plain", ""))
        for cell in cells
        for output in cell.get("outputs", [])
    )
    trained = next(
        cell_text(cell) for cell in cells if cell.source.startswith('print(ask("Could you tell')
    )
    answer, capital = trained.strip().splitlines()[:2]
    assert "Kera" in answer  # a phrasing it never saw in training
    assert "Paris" in capital  # and what it knew stays
    saved = cell_text(cells[-1])
    assert "adapter_model.safetensors" in saved and "config.json" in saved
    assert "Kera" in saved.split("reloaded:")[1]  # the merged preset keeps the new name
