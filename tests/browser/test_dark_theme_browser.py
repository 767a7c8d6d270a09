"""The panel follows JupyterLab's dark theme: the chat and every inspector tab, with a reply in
the transcript and its tokens coloured, are screenshotted in "JupyterLab Dark", and every piece of
text on screen is checked against its background for WCAG AA contrast (4.5:1), computed from the
DOM's colours as drawn. Screenshots go to test-artifacts/dark-*.png."""

from __future__ import annotations

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD_TIMEOUT_S = 300  # model load and first compilation on a small CPU machine

CELLS = [
    "from kerasllm_widget import ChatWidget\n"
    'chat = ChatWidget.from_preset("smollm2-135m-instruct", temperature=0.0, max_new_tokens=12)\n'
    "chat",
]


@pytest.fixture(scope="module")
def browser():
    # One Playwright per module: a second one may not start while the first runs.
    if H.chromium_path() is None:
        pytest.fail(
            "chromium is not installed (apt-get install chromium); `make test-deps` does it"
        )
    with H.chromium_browser() as browser:
        yield browser


@pytest.fixture(scope="module")
def notebook(tmp_path_factory, smollm2_gguf, browser):
    root = tmp_path_factory.mktemp("jupyter-dark")
    H.write_notebook(root / "dark.ipynb", CELLS)
    with H.jupyter_server(root, theme="JupyterLab Dark") as server:
        page = H.open_notebook(browser, server.lab_url("dark.ipynb"), "lab", viewport=(1280, 1200))
        try:
            yield page
        finally:
            page.page.context.close()
            server.shutdown_kernels()


def _assert_readable(page, where: str) -> None:
    report = H.contrast_failures(page, ".kerasllm-widget .kw-root")
    assert report["checked"] > 0, where
    assert report["failures"] == [], f"{where}: text below WCAG AA contrast: {report['failures']}"


def test_chat_and_inspectors_are_readable_in_jupyterlab_dark(notebook):
    page = notebook.page
    # The theme is on: JupyterLab's own background is dark.
    assert page.evaluate("() => document.body.dataset.jpThemeLight") == "false"
    notebook.run_cell(0)
    chat = page.locator(".kerasllm-widget").first
    page.wait_for_function(
        "() => document.querySelector('.kerasllm-widget .kw-status')?.dataset.state === 'ready'",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    chat.locator("select.kw-colour-by").select_option("probability")
    box = chat.locator(".kw-input")
    box.click()
    box.fill("Name three colours.")
    box.press("Enter")
    page.wait_for_function(
        """() => document.querySelector('.kerasllm-widget .kw-assistant')
                   ?.dataset.status === 'done'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    chat.locator(".kw-assistant .kw-coloured-token").nth(1).click()  # its alternatives open
    panel_bg = page.evaluate(
        "() => getComputedStyle(document.querySelector('.kerasllm-widget .kw-root')).backgroundColor"
    )
    assert panel_bg == "rgb(33, 33, 33)", panel_bg  # JupyterLab Dark's --jp-layout-color1
    H.screenshot(chat.locator(".kw-root"), "dark-chat.png")
    _assert_readable(page, "chat")
    chat.locator("select.kw-colour-by").select_option("")
    _assert_readable(page, "chat, plain reply")

    # Each inspector tab once its data is drawn (the probabilities: a token clicked open).
    for tab, ready in [
        ("tokens", ".kw-chip"),
        ("attention", ".kw-attention[data-state='ready']"),
        ("probabilities", ".kw-probabilities[data-state='ready'] button.kw-scored"),
        ("lens", ".kw-lens[data-state='ready'] .kw-lens-cell"),
        ("attribution", ".kw-attribution[data-state='idle']"),
        ("cache", ".kw-kv-grid .kw-kv-cell"),
    ]:
        chat.locator(f'.kw-tab[data-tab="{tab}"]').click()
        panel = chat.locator(f'.kw-tab-panel[data-tab="{tab}"]')
        panel.locator(ready).first.wait_for(timeout=LOAD_TIMEOUT_S * 1000)
        if tab == "probabilities":
            panel.locator("button.kw-scored.kw-role-assistant").nth(1).click()
        H.screenshot(chat.locator(".kw-root"), f"dark-{tab}.png")
        _assert_readable(page, tab)
        if tab == "attention":
            # Row 0, last column: attention to a later token, zero; on a dark panel the map's
            # zero is the night scale's near-black, not a white square.
            zero = page.evaluate(
                """() => {
                  const c = document.querySelector('.kerasllm-widget .kw-heatmap-canvas');
                  return Array.from(c.getContext('2d').getImageData(c.width - 2, 1, 1, 1).data);
                }"""
            )
            assert zero[3] == 255 and sum(zero[:3]) < 120, zero


# The panel's colours outside JupyterLab, read from the built stylesheet in a bare page: VS Code's
# and Colab's theme variables (set on the page, as their output frames do), and the system's dark
# preference where the page names no theme.
PANEL = """<div class="kerasllm-widget"><div class="kw-root"><div class="kw-chat">
  <div class="kw-status" data-state="ready"><span class="kw-status-model">tiny</span>
  <span class="kw-status-notice">Native CPU decode kernel off</span></div>
  <select><option>Colour by probability</option></select>
  <button class="kw-btn kw-primary kw-send">Send</button></div></div></div>"""


def _panel_colours(browser, scheme: str, page_style: str = "") -> dict:
    css = (H.ROOT / "kerasllm_widget" / "static" / "chat.css").read_text("utf-8")
    context = browser.new_context(color_scheme=scheme)
    try:
        page = context.new_page()
        page.set_content(f"<style>{css}</style><body style='{page_style}'>{PANEL}</body>")
        colours = page.evaluate(
            """() => {
                const style = (sel) => getComputedStyle(document.querySelector(sel));
                return { bg: style('.kw-root').backgroundColor, fg: style('.kw-root').color,
                         select: style('.kw-root select').backgroundColor };
            }"""
        )
        colours["contrast"] = H.contrast_failures(page, ".kerasllm-widget .kw-root")
        return colours
    finally:
        context.close()


@pytest.mark.parametrize(
    ("scheme", "page_style", "bg", "fg"),
    [
        ("light", "", "rgb(255, 255, 255)", "rgb(31, 35, 40)"),
        ("dark", "", "rgb(13, 17, 23)", "rgb(230, 237, 243)"),
        (
            "light",  # VS Code's dark theme, whatever the system says
            "--vscode-editor-background: #1f1f1f; --vscode-foreground: #cccccc",
            "rgb(31, 31, 31)",
            "rgb(204, 204, 204)",
        ),
        (
            "light",  # Colab's dark theme
            "--colab-primary-surface-color: #383838; --colab-primary-text-color: #e3e3e3",
            "rgb(56, 56, 56)",
            "rgb(227, 227, 227)",
        ),
    ],
    ids=["system-light", "system-dark", "vscode-dark", "colab-dark"],
)
def test_panel_follows_vscode_colab_and_the_system_theme(browser, scheme, page_style, bg, fg):
    colours = _panel_colours(browser, scheme, page_style)
    assert (colours["bg"], colours["fg"]) == (bg, fg)
    assert colours["select"] == bg  # not the browser's light control on a dark panel
    assert colours["contrast"]["checked"] >= 4
    assert colours["contrast"]["failures"] == []


def test_contrast_check_finds_text_below_aa(browser):
    page = browser.new_page()
    try:
        page.set_content(
            "<div class='kerasllm-widget'><div class='kw-root' style='background:#212121'>"
            "<button style='background:#2196f3;color:#fff'>Send</button>"
            "<span style='color:rgba(255,255,255,.87)'>fine</span></div></div>"
        )
        report = H.contrast_failures(page, ".kerasllm-widget .kw-root")
    finally:
        page.close()
    assert report["checked"] == 2
    (failure,) = report["failures"]
    assert failure["text"] == "Send" and 3.0 < failure["ratio"] < 3.2
