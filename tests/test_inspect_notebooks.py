"""The inspector notebooks run from top to bottom in a real kernel, offline."""

from __future__ import annotations

import pytest
from notebook_support import run_notebook

pytestmark = pytest.mark.slow


def outputs(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def widget_classes(notebook) -> list[str]:
    """The widgets the notebook displayed, by their model's module."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            plain = str(data.get("text/plain", ""))
            # Progress bars are widgets too; only this package's views are counted.
            if "application/vnd.jupyter.widget-view+json" in data and plain.startswith(
                "<kerasllm_widget"
            ):
                found.append(plain.split(" object")[0].rsplit(".", 1)[-1])
    return found


def test_tokenizer_and_preprocessor_notebook(smollm2_gguf, llama3_tokenizer_json):
    notebook = run_notebook("tokenizer_and_preprocessor.ipynb")
    text = outputs(notebook)
    assert "array([9906], dtype=int32)" in text  # the seed's "Hello"
    assert "128000,   9906, 128009" in text  # the seed's preprocessor output
    assert "Paris" in text
    assert widget_classes(notebook) == [
        "TokenInspector",
        "TokenInspector",
        "PreprocessorInspector",
        "PreprocessorInspector",
    ]


def test_attention_tour_notebook(smollm2_gguf):
    notebook = run_notebook("attention_tour.ipynb")
    text = outputs(notebook)
    assert "looks one token back:" in text and "attention sink:" in text
    assert widget_classes(notebook) == [
        "ChatWidget",
        "AttentionView",
        "AttentionView",
        "ProbabilitiesView",
    ]


def test_inside_the_model_notebook(smollm2_gguf):
    notebook = run_notebook("inside_the_model.ipynb")
    text = outputs(notebook)
    assert "layer │" in text and "Paris" in text  # the logit lens table
    for method in ("grad_x_input", "integrated_gradients", "attention_rollout"):
        assert f"{method}: " in text
    assert "after turn 1: {'reused': 0," in text
    assert (
        "dropped" in text and "system" in text
    )  # the small context dropped turns, kept the system
    assert "ChatWidget" in widget_classes(notebook)
