"""The ChatWidget's Cache tab end to end, in JupyterLab and in Notebook 7 (a server on loopback,
headless Chromium), with the real SmolLM2-135M-Instruct in the kernel.

After one turn the tab shows the turn's slots, none reused; after a second turn (sent from Python
while the tab is shown, so the reply streams into it) it shows more slots, the first turn's
reused. Screenshots go to test-artifacts/kv-cache-<front end>-*.png.
"""

from __future__ import annotations

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD_TIMEOUT_S = 300  # model load and first compilation on a small CPU machine

CELLS = [
    "from kerasllm_widget import ChatWidget\n"
    'chat = ChatWidget.from_preset("smollm2-135m-instruct", temperature=0.0, max_new_tokens=12,\n'
    '                              system_prompt="Answer in one short sentence.")\n'
    "chat",
    'first = chat.send("Name a colour.")',
    'second = chat.send("And a fruit?")',
]

# The cache view's state: slots drawn, whether a reply streams, reused cells, done replies.
STATE_JS = """() => {
    const root = document.querySelector('.kerasllm-widget');
    const view = root?.querySelector('.kw-kv');
    return {
        used: Number(view?.dataset.used ?? -1),
        running: view?.dataset.running ?? '',
        reused: view ? view.querySelectorAll('.kw-kv-grid .kw-kv-reused').length : 0,
        done: root ? root.querySelectorAll('.kw-assistant[data-status="done"]').length : 0,
    };
}"""


@pytest.fixture(scope="module", params=["lab", "notebook7"])
def notebook(request, tmp_path_factory, smollm2_gguf):
    root = tmp_path_factory.mktemp(f"jupyter-kv_cache-{request.param}")
    with H.notebook_session(
        root, "kv_cache", CELLS, request.param, viewport=(1280, 1100)
    ) as notebook:
        yield notebook


def _wait_for_turn(page, done: int) -> dict:
    """Waits until ``done`` replies are done and the tab shows the cache after the last one."""
    page.wait_for_function(
        f"""() => {{
            const s = ({STATE_JS})();
            return s.done >= {done} && s.running === 'false' && s.used > 0;
        }}""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    return page.evaluate(STATE_JS)


def test_cache_tab_shows_the_slots_of_each_turn(notebook):
    page = notebook.page
    notebook.run_cell(0)
    chat = page.locator(".kerasllm-widget").first
    chat.locator(".kw-chat").wait_for(timeout=60_000)
    page.wait_for_function(
        """() => document.querySelector('.kerasllm-widget')
                   ?.querySelector('.kw-status')?.dataset.state === 'ready'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    chat.locator('.kw-tab[data-tab="cache"]').click()
    chat.locator(".kw-kv").wait_for(timeout=30_000)

    notebook.run_cell(1)
    first = _wait_for_turn(page, 1)
    assert first["reused"] == 0  # nothing was kept before the first turn
    text = chat.locator(".kw-kv").inner_text()
    assert f"{first['used']} of " in text and "per token" in text
    legend = chat.locator(".kw-kv-legend").inner_text()
    assert "system" in legend and "user 1" in legend and "assistant 1" in legend
    H.screenshot(chat.locator(".kw-root"), f"kv-cache-{notebook.flavour}-turn1.png")

    # The second turn streams into the tab; it reuses the first turn's slots.
    page.evaluate(
        """() => {
            const view = document.querySelector('.kerasllm-widget .kw-kv');
            window.__kwUsed = [];
            new MutationObserver(() => window.__kwUsed.push(Number(view.dataset.used)))
                .observe(view, { attributes: true, attributeFilter: ['data-used'] });
        }"""
    )
    notebook.run_cell(2)
    second = _wait_for_turn(page, 2)
    assert second["used"] > first["used"]
    assert second["reused"] >= first["used"] - 1  # turn 1's prompt and reply, but for a seam
    assert "user 2" in chat.locator(".kw-kv-legend").inner_text()
    print("slots drawn while the second turn streamed:", page.evaluate("window.__kwUsed"))
    chat.locator(".kw-kv-grid .kw-kv-cell").nth(3).hover()
    assert "slot 3" in chat.locator(".kw-kv-detail").inner_text()
    H.screenshot(chat.locator(".kw-root"), f"kv-cache-{notebook.flavour}-turn2.png")
