"""The Attribution view end to end, in JupyterLab and in Notebook 7 (a server on loopback,
headless Chromium), with the real SmolLM2-135M-Instruct in the kernel.

A short greedy chat; a reply token's "Attribute" in the Chat tab opens the Attribution tab on
that token; clicking another reply token colours the tokens before it (their computed
backgrounds are read); switching to attention rollout changes the colours; a standalone
AttributionView on a text colours its tokens too. (Integrated gradients' progress and Stop are
covered in tests/test_attribution_view.py and the view's vitest: a browser run of it would
spend a minute compiling on a small CPU machine.) Screenshots go to test-artifacts/attribution-<front end>-*.png.
"""

from __future__ import annotations

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD_TIMEOUT_S = 300  # model load and first compilation on a small CPU machine

CELLS = [
    "from kerasllm_widget import AttributionView, ChatWidget\n"
    'chat = ChatWidget.from_preset("smollm2-135m-instruct", temperature=0.0, max_new_tokens=8)\n'
    "chat",
    "AttributionView(chat.chat_state.model, text='The capital of France is Paris.')",
]

# The n-th widget's attribution view finished `method` for `target` (a position, as a string).
READY = """([view, method, target]) => {
    const el = document.querySelectorAll('.kerasllm-widget')[view]?.querySelector('.kw-attribution');
    return el && el.dataset.state === 'ready' && el.dataset.method === method
        && (target === null || el.dataset.target === target);
}"""

# The computed background of every token before the target: [index, "rgb(...)"].
BACKGROUNDS = """(view) => {
    const el = document.querySelectorAll('.kerasllm-widget')[view].querySelector('.kw-attribution');
    const target = Number(el.dataset.target);
    return [...el.querySelectorAll('.kw-attr-token')]
        .filter((b) => Number(b.dataset.index) < target)
        .map((b) => [Number(b.dataset.index), getComputedStyle(b).backgroundColor]);
}"""


@pytest.fixture(scope="module", params=["lab", "notebook7"])
def notebook(request, tmp_path_factory, smollm2_gguf):
    root = tmp_path_factory.mktemp(f"jupyter-attribution-{request.param}")
    with H.notebook_session(
        root, "attribution", CELLS, request.param, viewport=(1280, 1200)
    ) as notebook:
        yield notebook


def shot(notebook, locator, name: str) -> None:
    H.screenshot(locator, f"attribution-{notebook.flavour}-{name}.png")


def coloured(backgrounds: list) -> dict[int, str]:
    """The tokens given a colour (not transparent, not the neutral near-white of a zero)."""
    plain = {"rgba(0, 0, 0, 0)", "transparent", "rgb(247, 247, 247)"}
    return {index: colour for index, colour in backgrounds if colour not in plain}


def test_attribution_tab_colours_the_tokens_before_a_clicked_reply_token(notebook):
    page = notebook.page
    notebook.run_cell(0)
    chat = page.locator(".kerasllm-widget").nth(0)
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[0]
                   ?.querySelector('.kw-status')?.dataset.state === 'ready'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    # Colouring on: a reply token's popover (its alternatives) offers "Attribute".
    chat.locator("select.kw-colour-by").select_option("probability")
    box = chat.locator(".kw-input")
    box.click()
    box.fill("What is the capital of France?")
    box.press("Enter")
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[0]
                   .querySelector('.kw-assistant')?.dataset.status === 'done'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    chat.locator(".kw-assistant .kw-coloured-token").nth(1).click()
    chat.locator(".kw-alternatives-attribute").click()
    view = chat.locator(".kw-attribution")
    page.wait_for_function(READY, arg=[0, "grad_x_input", None], timeout=LOAD_TIMEOUT_S * 1000)
    assert chat.locator('.kw-tab[data-tab="attribution"]').get_attribute("aria-selected") == "true"
    first_target = int(view.get_attribute("data-target"))
    target = view.locator(".kw-attr-target")
    assert target.count() == 1 and "kw-role-assistant" in (target.get_attribute("class") or "")
    # The chat template's special tokens are hidden until asked for.
    assert view.locator(".kw-attr-special").count() == 0
    view.locator(".kw-attr-hide-special").uncheck()
    assert view.locator(".kw-attr-special").count() >= 4  # <|im_start|>, <|im_end|> of 2 turns
    view.locator(".kw-attr-hide-special").check()

    # Another reply token, clicked in the tab: the tokens before it light up.
    replies = view.locator(".kw-attr-token.kw-role-assistant")
    last = replies.nth(replies.count() - 1)
    position = last.get_attribute("data-index")
    assert int(position) != first_target
    last.click()
    page.wait_for_function(READY, arg=[0, "grad_x_input", position], timeout=120_000)
    gradient = coloured(page.evaluate(BACKGROUNDS, 0))
    assert len(gradient) >= 5, gradient
    assert len(set(gradient.values())) >= 3  # a scale, not one colour
    assert "score" in (view.locator(".kw-attr-token").nth(3).get_attribute("title") or "")
    assert view.locator(".kw-attr-legend").is_visible()
    shot(notebook, chat.locator(".kw-root"), "gradient")

    view.locator("select.kw-attr-method").select_option("attention_rollout")
    page.wait_for_function(READY, arg=[0, "attention_rollout", position], timeout=120_000)
    rollout = coloured(page.evaluate(BACKGROUNDS, 0))
    assert len(rollout) >= 5 and rollout != gradient
    shot(notebook, chat.locator(".kw-root"), "rollout")


def test_standalone_attribution_view_on_a_text(notebook):
    page = notebook.page
    notebook.run_cell(1)  # the chat's model is already loaded in this kernel
    view = page.locator(".kerasllm-widget").nth(1).locator(".kw-attribution")
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[1]
                   ?.querySelector('.kw-attribution')?.dataset.state === 'idle'""",
        timeout=120_000,
    )
    tokens = view.locator(".kw-attr-token")
    last = tokens.nth(tokens.count() - 1)  # "." after "Paris"
    position = last.get_attribute("data-index")
    last.click()
    page.wait_for_function(READY, arg=[1, "grad_x_input", position], timeout=120_000)
    assert len(coloured(page.evaluate(BACKGROUNDS, 1))) >= 4
    shot(notebook, page.locator(".kerasllm-widget").nth(1).locator(".kw-root"), "standalone")
