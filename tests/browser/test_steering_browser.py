"""The Steering and Compare tabs end to end, in JupyterLab and in Notebook 7 (a server on
loopback, headless Chromium), with the real SmolLM2-135M-Instruct in the kernel.

Steering: computes a vector from the default prompts for and against, then asks one question at
a large strength; the steered reply must differ from the unsteered one. Compare: the chat's
conversation against a copy of SmolLM2 whose layer 3 MLP output is scaled by 3 (log-probability
differences of up to about 2.6 nats on a short English sentence; the same model in bfloat16 moves
them by at most about 0.13, too little to see), checks the tokens are coloured, opens both top-k
lists and B's continuation; the standalone CompareView colours a text the same way.
Screenshots: test-artifacts/steering-*.png and compare-*.png.
"""

from __future__ import annotations

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD_TIMEOUT_S = 300  # model load and first compilation on a small CPU machine

CELLS = [
    "from kerasllm_widget import ChatWidget, Llama3CausalLM\n"
    'chat = ChatWidget.from_preset("smollm2-135m-instruct", temperature=0.0, max_new_tokens=16)\n'
    "chat",
    "chat.wait_ready(300)\n"
    'chat.send("Name a fruit.").result(timeout=300)\n'
    'other = Llama3CausalLM.from_preset("smollm2-135m-instruct")\n'
    "down = other.backbone.transformer_layers[3].feedforward_output_dense\n"
    "down.kernel.assign(down.kernel * 3.0)  # one layer's MLP output three times as strong\n"
    "chat.compare_with(other)",
    "from kerasllm_widget import CompareView\n"
    'CompareView(chat.chat_state.model, other, text="The capital of France is Paris.")',
]

# The panel of the first (only) widget on the page.
ROOT = "document.querySelectorAll('.kerasllm-widget')[0]"


@pytest.fixture(scope="module", params=["lab", "notebook7"])
def notebook(request, tmp_path_factory, smollm2_gguf):
    root = tmp_path_factory.mktemp(f"jupyter-steering-{request.param}")
    with H.notebook_session(
        root, "steering", CELLS, request.param, viewport=(1280, 1200)
    ) as notebook:
        yield notebook


def test_the_steered_reply_differs_from_the_unsteered_one(notebook):
    page = notebook.page
    notebook.run_cell(0)
    chat = page.locator(".kerasllm-widget").first
    chat.locator(".kw-chat").wait_for(timeout=60_000)
    page.wait_for_function(
        f"() => {ROOT}?.querySelector('.kw-status')?.dataset.state === 'ready'",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    chat.locator('.kw-tab[data-tab="steering"]').click()
    steering = chat.locator(".kw-steer")
    page.wait_for_function(
        f"() => {ROOT}.querySelector('.kw-steer-layer')?.max === '29'", timeout=60_000
    )
    assert chat.locator(".kw-steer-ask").is_disabled()  # no vector yet
    chat.locator(".kw-steer-compute").click()
    assert steering.get_attribute("aria-busy") == "true"
    page.wait_for_function(
        f"() => ({ROOT}.querySelector('.kw-steer-vector')?.textContent || '').includes('norm')",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    assert "layer 10" in chat.locator(".kw-steer-vector").inner_text()
    page.evaluate(
        f"""() => {{
            const slider = {ROOT}.querySelector('.kw-steer-strength');
            slider.value = '8';
            slider.dispatchEvent(new Event('input'));
        }}"""
    )
    chat.locator(".kw-steer-ask").click()
    assert chat.locator(".kw-steer-stop").is_visible()  # Stop is offered while it runs
    page.wait_for_function(
        f"""() => {ROOT}.querySelector('.kw-steer').getAttribute('aria-busy') === 'false'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    plain = chat.locator('.kw-steer-reply[data-which="plain"]').inner_text().strip()
    steered = chat.locator('.kw-steer-reply[data-which="steered"]').inner_text().strip()
    assert plain and steered
    assert plain != steered
    assert "strength +8.0" in steering.inner_text()
    assert not chat.locator(".kw-inspect-error").first.is_visible()
    H.screenshot(chat.locator(".kw-root"), f"steering-{notebook.flavour}.png")


def test_the_compare_tab_colours_tokens_by_the_difference(notebook):
    page = notebook.page
    chat = page.locator(".kerasllm-widget").first
    notebook.run_cell(1)
    tab = chat.locator('.kw-tab[data-tab="compare"]')
    tab.wait_for(state="visible", timeout=LOAD_TIMEOUT_S * 1000)
    tab.click()
    page.wait_for_function(
        f"() => {ROOT}.querySelectorAll('button.kw-compare-token').length >= 10",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    colours = page.evaluate(
        f"""() => [...{ROOT}.querySelectorAll('button.kw-compare-token')]
                   .map(b => getComputedStyle(b).backgroundColor)"""
    )
    neutral = "rgb(247, 247, 247)"
    assert len(set(colours)) >= 3, colours
    assert any(c != neutral for c in colours)
    assert "A: smollm2-135m-instruct" in chat.locator(".kw-compare").inner_text()

    # The token B disagrees with most: both top-k lists, then B's continuation from there.
    index = page.evaluate(
        f"""() => {{
            const buttons = [...{ROOT}.querySelectorAll('button.kw-compare-token')];
            const far = (b) => {{
                const [r, g, bl] = getComputedStyle(b).backgroundColor.match(/\\d+/g).map(Number);
                return Math.abs(r - 247) + Math.abs(g - 247) + Math.abs(bl - 247);
            }};
            buttons.sort((x, y) => far(y) - far(x));
            return Number(buttons[0].dataset.index);
        }}"""
    )
    chat.locator(f'button.kw-compare-token[data-index="{index}"]').click()
    lists = chat.locator(".kw-compare-list")
    assert lists.count() == 2
    assert lists.nth(0).locator("tr").count() == 5 and lists.nth(1).locator("tr").count() == 5
    chat.locator(".kw-compare-continue").click()
    page.wait_for_function(
        f"""() => {{
            const text = {ROOT}.querySelector('.kw-compare-continuation')?.textContent || '';
            return text.startsWith('B continues:') && !text.endsWith('…');
        }}""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    H.screenshot(chat.locator(".kw-root"), f"compare-{notebook.flavour}.png")


def test_the_standalone_compare_view_colours_a_text(notebook):
    page = notebook.page
    notebook.run_cell(2)
    view = page.locator(".kerasllm-widget").nth(1)
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[1]
                   ?.querySelectorAll('button.kw-compare-token').length >= 5""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    styles = view.locator("button.kw-compare-token").evaluate_all(
        "buttons => buttons.map(b => getComputedStyle(b).backgroundColor)"
    )
    assert len(set(styles)) >= 2, styles
    assert "mean KL" in view.inner_text()
    H.screenshot(view.locator(".kw-root"), f"compare-view-{notebook.flavour}.png")
