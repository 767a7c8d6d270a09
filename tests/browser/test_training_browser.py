"""The ChatWidget's Training tab end to end: a real JupyterLab, headless Chromium, a short fit of a
tiny Llama with the chat's own TrainingMonitor, the live loss curve drawn in the tab, then a reply
from the trained model in the Chat tab. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "import sys\n"
    f"sys.path.insert(0, {str(H.ROOT / 'tests')!r})\n"
    "import keras\n"
    "from tiny_llama import CORPUS, tiny_causal_lm\n"
    "from kerasllm_widget import ChatWidget\n"
    "model = tiny_causal_lm(seed=1)\n"
    "model.compile(optimizer=keras.optimizers.AdamW(1e-2))\n"
    "chat = ChatWidget(model, temperature=0.0, max_new_tokens=8)\n"
    'monitor = chat.training_monitor(sample_prompt="Hello!", max_new_tokens=6,\n'
    '                                title="Tiny Llama learns", update_interval_s=0.0,\n'
    "                                compare_start=True)\n"
    "chat",
    "history = model.fit(CORPUS * 2, batch_size=4, epochs=4, callbacks=[monitor], verbose=0)\n"
    'print("LOSSES", [round(v, 3) for v in history.history["loss"]])',
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if H.chromium_path() is None:
        pytest.fail(
            "chromium is not installed (apt-get install chromium); `make test-deps` does it"
        )
    root = tmp_path_factory.mktemp("jupyter")
    H.write_notebook(root / "training.ipynb", CELLS)
    with H.jupyter_server(root) as server:
        yield server


def test_training_tab_draws_the_live_curve_of_a_fit(server):
    with H.chromium_browser() as browser:
        notebook = H.open_notebook(browser, server.lab_url("training.ipynb"), "lab")
        page = notebook.page
        try:
            notebook.run_cell(0)
            panel = page.locator(".kerasllm-widget").first
            tab = panel.locator('.kw-tab[data-tab="training"]')
            tab.wait_for(state="visible", timeout=120_000)
            tab.click()
            training = panel.locator('.kw-tab-panel[data-tab="training"]')
            assert training.locator(".kw-train-title").inner_text() == "Tiny Llama learns"
            assert training.locator(".kw-train-loss .kw-train-empty").text_content() == "waiting"

            notebook.run_cell(1)
            # The curve grows while fit runs, and ends with 4 epochs of 4 steps.
            page.wait_for_function(
                """() => document.querySelector(
                    '.kerasllm-widget .kw-tab-panel[data-tab="training"] .kw-train-status'
                  )?.textContent === 'done'""",
                timeout=300_000,
            )
            notebook.wait_for_cell(1, timeout_s=60)
            losses = notebook.cell_output_text(1, "LOSSES")
            values = [float(v) for v in re.findall(r"\d+\.\d+", losses)]
            assert len(values) == 4 and values[-1] < values[0]
            path = training.locator(".kw-train-raw").get_attribute("d")
            assert path.startswith("M") and path.count("L") == 15  # 16 steps, one segment
            assert training.locator(".kw-train-epoch circle").count() == 4
            assert training.locator(".kw-train-epochs tr").count() == 5  # header + 4 epochs
            assert training.locator(".kw-train-samples li").count() == 5  # prompt + 4 samples
            # Each sample scored under the starting weights too (compare_start=True): a coloured
            # line of its tokens with the mean KL.
            deltas = training.locator(".kw-train-delta")
            assert deltas.count() >= 1 and "mean KL" in deltas.first.inner_text()
            stats = training.locator(".kw-train-stats").inner_text()
            assert "epoch 4/4" in stats and "step 4/4" in stats and "lr 1.00e-2" in stats
            shot = H.screenshot(panel.locator(".kw-root"), "training-tab.png")
            assert shot.stat().st_size > 10_000

            # The Chat tab answers with the trained model.
            panel.locator('.kw-tab[data-tab="chat"]').click()
            box = panel.locator(".kw-input")
            box.click()
            box.fill("Hello!")
            box.press("Enter")
            page.wait_for_function(
                """() => {
                    const a = document.querySelector('.kerasllm-widget .kw-assistant');
                    return a && a.dataset.status === 'done';
                }""",
                timeout=120_000,
            )
            assert H.assistant_entries(page)[0]["text"]
            H.screenshot(panel.locator(".kw-root"), "training-chat.png")
        except Exception:
            H.ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(H.ARTIFACTS / "training-failure-page.png"))
            raise
        finally:
            page.context.close()
