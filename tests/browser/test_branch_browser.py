"""Branching a reply in the ChatWidget end to end: a real JupyterLab / Notebook 7 server, headless
Chromium, the real SmolLM2-135M-Instruct in the kernel.

A short greedy chat; the reply shown token by token; a click on a token opens its popover; an
alternative there continues the reply from that token: a new branch streams in place of the
reply, differs from it at that token, and shows ``‹ 2 / 2 ›``; ``‹`` brings the first reply
back. Screenshots: test-artifacts/branch-{lab,notebook7}-*.png.
"""

from __future__ import annotations

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "from kerasllm_widget import ChatWidget\n"
    'chat = ChatWidget.from_preset("smollm2-135m-instruct", temperature=0, max_new_tokens=12,'
    " top_k_alternatives=5)\n"
    "chat",
]
LOAD_TIMEOUT_S = 300  # model load and first compilation on a small CPU machine
BRANCH_AT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_gguf):
    if H.chromium_path() is None:
        pytest.fail(
            "chromium is not installed (apt-get install chromium); `make test-deps` does it"
        )
    root = tmp_path_factory.mktemp("jupyter")
    for flavour in ("lab", "notebook7"):
        H.write_notebook(root / f"branch-{flavour}.ipynb", CELLS)
    with H.jupyter_server(root) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with H.chromium_browser() as browser:
        yield browser


def _reply_tokens(reply) -> list[str]:
    """The reply's tokens, shown one by one (the Branch toggle)."""
    reply.locator(".kw-branch-toggle").click()
    tokens = reply.locator(".kw-coloured-token")
    tokens.first.wait_for(timeout=10_000)
    return tokens.all_inner_texts()


def branch_flow(notebook: H.NotebookPage, label: str) -> None:
    page = notebook.page
    notebook.run_cell(0)
    panel = page.locator(".kerasllm-widget").first
    page.wait_for_function(
        """() => document.querySelector('.kerasllm-widget .kw-status')?.dataset.state === 'ready'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    box = panel.locator(".kw-input")
    box.click()
    box.fill("Name three colours.")
    box.press("Enter")
    reply = panel.locator('.kw-assistant[data-status="done"]')
    reply.wait_for(timeout=LOAD_TIMEOUT_S * 1000)
    first_text = reply.locator(".kw-markdown").inner_text()
    first_tokens = _reply_tokens(reply)
    assert len(first_tokens) > BRANCH_AT + 1, first_tokens

    # A click on a token: its alternatives, a box for one's own continuation, the actions.
    reply.locator(f'.kw-coloured-token[data-index="{BRANCH_AT}"]').click()
    popover = reply.locator(".kw-token-popover")
    popover.wait_for(timeout=10_000)
    assert popover.locator(".kw-branch-text").is_visible()
    assert popover.locator(".kw-bar-chosen").count() == 1
    if label == "lab":
        # Keyboard: the arrows move between the alternatives. (Notebook 7 moves between cells on
        # an arrow before any output sees it, whatever the output asks for.)
        rows = popover.locator("button.kw-bar-row")
        rows.first.focus()
        page.keyboard.press("ArrowDown")
        focused = page.evaluate("() => document.activeElement?.dataset.id")
        assert focused == rows.nth(1).get_attribute("data-id")
    H.screenshot(panel.locator(".kw-root"), f"branch-{label}-popover.png")
    alternative = popover.locator("button.kw-bar-row:not(.kw-bar-chosen)").first
    piece = alternative.locator(".kw-bar-piece").inner_text()
    alternative.click()

    # The branch streams in place of the reply and differs from it at that token.
    count = panel.locator(".kw-assistant .kw-sibling-count")
    page.wait_for_function(
        """() => {
            const a = document.querySelector('.kerasllm-widget .kw-assistant');
            return a && a.dataset.status === 'done'
                && a.querySelector('.kw-sibling-count')?.textContent === '2 / 2';
        }""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    assert panel.locator(".kw-assistant").count() == 1
    branch = panel.locator(".kw-assistant")
    assert branch.locator(".kw-markdown").inner_text() != first_text
    branch_tokens = _reply_tokens(branch)
    assert branch_tokens[:BRANCH_AT] == first_tokens[:BRANCH_AT]
    # The popover shows a line break as ↵.
    chosen = branch_tokens[BRANCH_AT].replace("\n", "↵").replace("\t", "⇥")
    assert chosen == piece and branch_tokens[BRANCH_AT] != first_tokens[BRANCH_AT]
    branch.locator(".kw-branch-toggle").click()  # back to text
    H.screenshot(panel.locator(".kw-root"), f"branch-{label}-branched.png")

    # ‹ brings the first reply back.
    branch.locator(".kw-sibling-prev").click()
    page.wait_for_function(
        """() => document.querySelector('.kerasllm-widget .kw-assistant .kw-sibling-count')
              ?.textContent === '1 / 2'""",
        timeout=60_000,
    )
    assert count.inner_text() == "1 / 2"
    assert panel.locator(".kw-assistant .kw-markdown").inner_text() == first_text
    H.screenshot(panel.locator(".kw-root"), f"branch-{label}-switched.png")


def test_branch_in_jupyterlab(server, browser):
    H.run_flow(server, browser, "branch", "lab", branch_flow)


def test_branch_in_notebook7(server, browser):
    H.run_flow(server, browser, "branch", "notebook7", branch_flow)
