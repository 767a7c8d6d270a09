"""The ChatWidget end to end: a real JupyterLab / Notebook 7 server, headless Chromium, and the real
SmolLM2-135M-Instruct model in the kernel.

One flow, run in both front ends: type a question and watch the answer stream in; start a long
answer, open a second view of the widget mid-reply and see it catch up, Stop the answer; ask again;
change the temperature in the settings drawer and read it back in the kernel; export the
conversation as Markdown and JSON. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    # seed: the same answers each run; max_new_tokens leaves the story room to run until Stop.
    "from kerasllm_widget import ChatWidget\n"
    'chat = ChatWidget.from_preset("smollm2-135m-instruct", seed=0, max_new_tokens=400)\n'
    "chat",
    'print("TEMPERATURE", chat.temperature, "SEED", chat.seed)',
    'print("HISTORY", [m["role"] for m in chat.history])',
    "chat  # a second view of the same widget",
]
LOAD_TIMEOUT_S = 300  # model load and first compilation on a small CPU machine


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_gguf):
    # smollm2_gguf (tests/conftest.py) fails with a clear message when the model is not installed.
    if H.chromium_path() is None:
        pytest.fail(
            "chromium is not installed (apt-get install chromium); `make test-deps` does it"
        )
    root = tmp_path_factory.mktemp("jupyter")
    # One notebook per front end, so each test gets its own kernel.
    for flavour in ("lab", "notebook7"):
        H.write_notebook(root / f"chat-{flavour}.ipynb", CELLS)
    with H.jupyter_server(root) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with H.chromium_browser() as browser:
        yield browser


def _panel(page):
    return page.locator(".kerasllm-widget").first


def _send(page, text: str) -> None:
    box = _panel(page).locator(".kw-input")
    box.click()
    box.fill(text)
    box.press("Enter")


def _wait_reply_finished(page, count: int, timeout_s: float) -> dict:
    """Waits until there are `count` assistant entries and the last is no longer streaming."""
    page.wait_for_function(
        """(count) => {
            const all = document.querySelector('.kerasllm-widget').querySelectorAll('.kw-assistant');
            if (all.length < count) return false;
            const s = all[count - 1].dataset.status;
            return s && s !== 'streaming' && s !== 'sent';
        }""",
        arg=count,
        timeout=timeout_s * 1000,
    )
    return H.assistant_entries(page)[count - 1]


def chat_flow(notebook: H.NotebookPage, label: str) -> None:
    page = notebook.page
    notebook.run_cell(0)
    panel = _panel(page)
    panel.locator(".kw-chat").wait_for(timeout=60_000)
    H.screenshot(panel.locator(".kw-root"), f"chat-{label}-loading.png")
    # The panel is up before the model: it shows the load, then the model facts.
    page.wait_for_function(
        """() => document.querySelector('.kerasllm-widget .kw-status')?.dataset.state === 'ready'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    model_line = panel.locator(".kw-status-model").inner_text()
    assert "smollm2" in model_line.lower() and "jax" in model_line

    # 1. A question: the answer streams in, through several intermediate states.
    page.evaluate(H.RECORDER_JS)
    _send(page, "Explain in three sentences what a tokenizer does in a language model.")
    send_button = panel.locator(".kw-send")
    page.wait_for_function(
        "() => document.querySelector('.kerasllm-widget .kw-send')?.dataset.mode === 'stop'",
        timeout=30_000,
    )
    assert send_button.inner_text() == "Stop"
    first = _wait_reply_finished(page, 1, timeout_s=LOAD_TIMEOUT_S)
    states = page.evaluate("() => window.__kwStates.map(s => s.text)")
    page.evaluate("() => window.__kwStopRecorder()")
    assert first["status"] == "done", first
    assert len(first["text"]) > 40
    assert len(states) >= 3, f"the reply arrived in {len(states)} step(s): {states}"
    # Each state extends the one before: the text grew, it was not replaced.
    normalized = [" ".join(s.split()) for s in states]
    grew = sum(len(b) > len(a) for a, b in zip(normalized, normalized[1:], strict=False))
    assert grew >= 2
    assert send_button.inner_text() == "Send"
    H.screenshot(panel.locator(".kw-root"), f"chat-{label}-answer.png")

    # 2. A long answer, stopped partway with the Stop button.
    _send(page, "Write a very long story about a dragon who learns to program computers.")
    page.wait_for_function(
        """() => {
            const el = document.querySelector(
                '.kerasllm-widget .kw-assistant[data-status="streaming"] .kw-markdown');
            return el && el.textContent.length > 60;
        }""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    # A second view opened mid-reply catches up with the text so far and streams on with it.
    notebook.run_cell(3)
    page.wait_for_function(
        """() => {
            const second = document.querySelectorAll('.kerasllm-widget')[1];
            const el = second && second.querySelector(
                '.kw-assistant[data-status="streaming"] .kw-markdown');
            return el && el.textContent.length > 60;
        }""",
        timeout=60_000,
    )
    second_view = page.locator(".kerasllm-widget").nth(1)
    assert second_view.locator(".kw-send").get_attribute("data-mode") == "stop"
    H.screenshot(panel.locator(".kw-root"), f"chat-{label}-streaming.png")
    clicked = time.monotonic()
    send_button.click()  # it is the Stop button now
    stopped = _wait_reply_finished(page, 2, timeout_s=10)
    latency = time.monotonic() - clicked
    print(f"[{label}] Stop pressed -> reply ended in {latency * 1000:.0f} ms")
    assert stopped["status"] == "cancelled", stopped
    assert len(stopped["text"]) > 60
    assert "stopped" in panel.locator(".kw-assistant").nth(1).locator(".kw-meta").inner_text()
    assert send_button.inner_text() == "Send"
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[1]
                   ?.querySelectorAll('.kw-assistant')[1]?.dataset.status === 'cancelled'""",
        timeout=10_000,
    )
    assert H.assistant_entries(page, view=1) == H.assistant_entries(page, view=0)
    H.screenshot(second_view.locator(".kw-root"), f"chat-{label}-second-view.png")

    # 3. Ask again: a new answer, after the stopped one.
    _send(page, "Thank you. What is the capital of France?")
    again = _wait_reply_finished(page, 3, timeout_s=120)
    assert again["status"] == "done" and again["text"], again
    assert "paris" in again["text"].lower()

    # 4. The settings drawer changes the kernel's traitlet.
    panel.locator(".kw-settings-toggle").click()
    temperature = panel.locator('input[name="temperature"]')
    temperature.fill("0.35")
    temperature.press("Enter")
    H.screenshot(panel.locator(".kw-root"), f"chat-{label}-settings.png")
    panel.locator(".kw-settings-toggle").click()
    # 5. Export: the conversation as Markdown and as JSON files.
    with page.expect_download() as markdown_download:
        panel.locator(".kw-export-md").click()
    markdown = Path(markdown_download.value.path()).read_text(encoding="utf-8")
    assert markdown.count("## User") == 3 and "Paris" in markdown and "*(stopped)*" in markdown
    with page.expect_download() as json_download:
        panel.locator(".kw-export-json").click()
    exported = json.loads(Path(json_download.value.path()).read_text(encoding="utf-8"))
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"] * 3
    assert exported["settings"]["temperature"] == 0.35

    notebook.run_cell(1)
    printed = notebook.cell_output_text(1, "TEMPERATURE")
    assert "TEMPERATURE 0.35 SEED 0" in printed, printed
    notebook.run_cell(2)
    roles = notebook.cell_output_text(2, "HISTORY")
    assert roles.count("'user'") == 3 and roles.count("'assistant'") == 3, roles
    H.screenshot(panel.locator(".kw-root"), f"chat-{label}.png")


def test_chat_in_jupyterlab(server, browser):
    H.run_flow(server, browser, "chat", "lab", chat_flow)


def test_chat_in_notebook7(server, browser):
    H.run_flow(server, browser, "chat", "notebook7", chat_flow)
