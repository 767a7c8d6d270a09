"""The inspectors end to end, in JupyterLab and in Notebook 7 (a server on loopback, headless
Chromium), with the real Llama 3 tokenizer and the real SmolLM2-135M-Instruct model in the kernel.

Types text into a TokenInspector and reads the chips ("Hello" is 9906, as in the seed); has a
short chat in a ChatWidget, colours its reply by probability and opens a token's alternatives;
opens its Attention tab, checks the canvas drew the chosen head and the background forward pass
made every layer ready; opens a 700-token map (sent shrunk to block maxima), zooms into it and
checks the region on screen arrives at full resolution; opens the Probabilities tab, clicks a generated token and reads its
alternatives, and takes a step of the step mode with a token the sampler did not pick.
Screenshots go to test-artifacts/, named after the front end.
"""

from __future__ import annotations

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOAD_TIMEOUT_S = 300  # model load and first compilation on a small CPU machine


def cells(tokenizer_json: str) -> list[str]:
    return [
        "from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer\n"
        "from kerasllm_widget.widgets.token_inspector import TokenInspector\n"
        # Configured as Llama-3.2-Instruct's tokenizer is: BOS first, <|eot_id|> as the end token.
        f"tokenizer = Llama3Tokenizer({tokenizer_json!r}, bos_token='<|begin_of_text|>',\n"
        "                            eos_token='<|eot_id|>', add_bos=True)\n"
        "TokenInspector(tokenizer, text='', sequence_length=6)",
        "from kerasllm_widget import ChatWidget\n"
        'chat = ChatWidget.from_preset("smollm2-135m-instruct", temperature=0.0, max_new_tokens=16)\n'
        "chat",
        "from kerasllm_widget.widgets.attention_view import AttentionView\n"
        "AttentionView(chat.chat_state.model, text='The cat sat on the mat because it was tired.')",
        "from kerasllm_widget.widgets.preprocessor_inspector import PreprocessorInspector\n"
        "PreprocessorInspector(tokenizer, ['Hello', 'Hi there!'], sequence_length=6)",
        "AttentionView(chat.chat_state.model, text='The cat sat on the mat because it was tired. ' * 64)",
    ]


@pytest.fixture(scope="module", params=["lab", "notebook7"])
def notebook(request, tmp_path_factory, smollm2_gguf, llama3_tokenizer_json):
    if H.chromium_path() is None:
        pytest.fail(
            "chromium is not installed (apt-get install chromium); `make test-deps` does it"
        )
    flavour = request.param
    root = tmp_path_factory.mktemp(f"jupyter-inspectors-{flavour}")
    H.write_notebook(root / "inspectors.ipynb", cells(str(llama3_tokenizer_json)))
    with H.jupyter_server(root) as server, H.chromium_browser() as browser:
        url = (
            server.lab_url("inspectors.ipynb")
            if flavour == "lab"
            else server.notebook7_url("inspectors.ipynb")
        )
        page = H.open_notebook(browser, url, flavour, viewport=(1280, 1400))
        try:
            yield page
        finally:
            H.ARTIFACTS.mkdir(exist_ok=True)
            page.page.screenshot(path=str(H.ARTIFACTS / f"inspectors-{flavour}-page.png"))
            page.page.context.close()
            server.shutdown_kernels()


def shot(notebook, locator, name: str) -> None:
    H.screenshot(locator, f"inspectors-{notebook.flavour}-{name}.png")


def test_token_inspector_shows_hello_as_9906(notebook):
    page = notebook.page
    notebook.run_cell(0)
    inspector = page.locator(".kerasllm-widget").first
    box = inspector.locator("textarea.kw-token-input")
    box.wait_for(timeout=60_000)
    box.click()
    box.type("Hello")
    page.wait_for_function(
        """() => [...document.querySelectorAll('.kerasllm-widget')[0].querySelectorAll('.kw-chip')]
                   .map(c => c.dataset.id).join(',') === '9906'""",
        timeout=30_000,
    )
    box.type(" world! 🦙")
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[0].querySelectorAll('.kw-chip').length >= 5""",
        timeout=30_000,
    )
    pieces = inspector.locator(".kw-chip-piece").all_inner_texts()
    assert pieces[:4] == ["Hello", "␣world", "!", "␣"] or pieces[:3] == ["Hello", "␣world", "!"]
    assert any(p.startswith("<0x") for p in pieces)  # the llama emoji splits into byte tokens
    inspector.locator(".kw-chip").nth(1).click()
    assert "20 77 6F 72 6C 64" in inspector.locator(".kw-token-detail").inner_text()  # " world"
    # The preprocessor table of the same text: the start token first, the end token marked.
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[0]
                   .querySelector('tr[data-row="token_ids"] td')?.textContent === '128000'""",
        timeout=30_000,
    )
    shot(notebook, inspector.locator(".kw-root"), "tokens")


def test_chat_tabs_show_attention_and_probabilities(notebook):
    page = notebook.page
    notebook.run_cell(1)
    chat = page.locator(".kerasllm-widget").nth(1)
    chat.locator(".kw-chat").wait_for(timeout=60_000)
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[1]
                   ?.querySelector('.kw-status')?.dataset.state === 'ready'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    # Colouring on before the reply: the engine then records each token's alternatives.
    chat.locator("select.kw-colour-by").select_option("probability")
    box = chat.locator(".kw-input")
    box.click()
    box.fill("Name three colours.")
    box.press("Enter")
    page.wait_for_function(
        """() => {
            const a = document.querySelectorAll('.kerasllm-widget')[1].querySelector('.kw-assistant');
            return a && a.dataset.status === 'done';
        }""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )

    # The reply coloured token by token; a click on a token shows the alternatives weighed there.
    tokens = chat.locator(".kw-assistant .kw-coloured-token")
    tokens.first.wait_for(timeout=30_000)
    assert tokens.count() >= 3
    assert "background: rgb(" in (tokens.nth(1).get_attribute("style") or "")
    tokens.nth(1).click()
    assert chat.locator(".kw-assistant .kw-alternatives").is_visible()
    assert chat.locator(".kw-assistant .kw-alternatives .kw-bar-chosen").count() == 1
    shot(notebook, chat.locator(".kw-root"), "chat-coloured")
    chat.locator("select.kw-colour-by").select_option("")

    # Attention: the head average first, then head 2; the canvas must have drawn that head.
    chat.locator('.kw-tab[data-tab="attention"]').click()
    attention = chat.locator(".kw-attention")
    ready = """(head) => {
        const el = document.querySelectorAll('.kerasllm-widget')[1].querySelector('.kw-attention');
        return el && el.dataset.state === 'ready' && el.dataset.head === head;
    }"""
    page.wait_for_function(ready, arg="mean", timeout=LOAD_TIMEOUT_S * 1000)
    attention.locator("select.kw-head").select_option("2")
    page.wait_for_function(ready, arg="2", timeout=120_000)
    pixels = page.evaluate(
        """() => {
            const canvas = document.querySelectorAll('.kerasllm-widget')[1].querySelector('.kw-heatmap-canvas');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let inked = 0, upper = 0;
            const w = canvas.width;
            for (let i = 0; i < data.length; i += 4) {
              const ink = data[i] < 240 || data[i + 1] < 240;  // not the white of p = 0
              if (!ink) continue;
              inked++;
              const x = (i / 4) % w, y = Math.floor(i / 4 / w);
              if (x > y + 2 * w / 64) upper++;  // strictly above the diagonal: future tokens
            }
            return { inked, upper, total: data.length / 4 };
        }"""
    )
    assert pixels["inked"] > 0.02 * pixels["total"], pixels
    assert pixels["upper"] == 0, pixels  # causal: nothing drawn where a query would see the future
    status = attention.locator(".kw-attn-status").inner_text()
    assert "head 2" in status and "tokens" in status
    # Hovering a token of the text lights up the tokens it attends to.
    strip_tokens = attention.locator(".kw-strip-token")
    count = strip_tokens.count()
    strip_tokens.nth(count - 1).hover()
    lit = attention.locator('.kw-strip-token[style*="background"]').count()
    assert lit >= 1
    # The forward pass runs on in the background until every layer is ready.
    page.wait_for_function(
        """() => Number(document.querySelectorAll('.kerasllm-widget')[1]
                   .querySelector('.kw-attention')?.dataset.readyLayers || 0) >= 30""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    shot(notebook, chat.locator(".kw-root"), "attention")
    attention.locator(".kw-model-view-btn").click()
    page.wait_for_function(
        """() => Number(document.querySelectorAll('.kerasllm-widget')[1]
                   .querySelector('.kw-model-view')?.dataset.filled || 0) >= 2""",
        timeout=120_000,
    )
    attention.locator('.kw-thumb[data-layer="1"][data-head="3"]').click()
    page.wait_for_function(ready, arg="3", timeout=120_000)
    assert attention.locator("select.kw-layer").input_value() == "1"
    shot(notebook, chat.locator(".kw-root"), "model-view")

    # Probabilities: the reply's tokens are coloured; a click shows the alternatives.
    chat.locator('.kw-tab[data-tab="probabilities"]').click()
    probabilities = chat.locator(".kw-probabilities")
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[1]
                   .querySelector('.kw-probabilities')?.dataset.state === 'ready'""",
        timeout=120_000,
    )
    replies = probabilities.locator("button.kw-scored.kw-role-assistant")
    assert replies.count() >= 3
    replies.nth(1).click()
    bars = probabilities.locator(".kw-prob-detail .kw-bar-row")
    assert bars.count() >= 2
    assert probabilities.locator(".kw-prob-detail .kw-bar-chosen").count() == 1
    shot(notebook, chat.locator(".kw-root"), "probabilities")

    # Step mode: start from the conversation, then choose a token the sampler did not pick.
    probabilities.locator(".kw-step-section summary").click()
    step = probabilities.locator(".kw-step")
    step.locator(".kw-step-start").click()
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[1]
                   .querySelector('.kw-step')?.dataset.state === 'ready'""",
        timeout=120_000,
    )
    other = step.locator(".kw-bar-row:not(.kw-bar-proposal)").nth(2)
    chosen_piece = other.locator(".kw-bar-piece").inner_text()
    other.click()
    page.wait_for_function(
        """() => {
            const s = document.querySelectorAll('.kerasllm-widget')[1].querySelector('.kw-step');
            return s && s.dataset.state === 'ready' && s.dataset.steps === '1';
        }""",
        timeout=120_000,
    )
    user_token = step.locator(".kw-step-token.kw-step-by-user")
    assert user_token.count() == 1
    assert user_token.inner_text() == chosen_piece.replace("␣", " ")
    step.locator(".kw-step-accept").click()
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[1].querySelector('.kw-step')?.dataset.steps === '2'""",
        timeout=120_000,
    )
    assert step.locator(".kw-step-token.kw-step-by-sampler").count() == 1
    shot(notebook, chat.locator(".kw-root"), "step-mode")


def test_standalone_attention_view_and_preprocessor_inspector(notebook):
    page = notebook.page
    notebook.run_cell(2)  # the chat's model is already loaded in this kernel
    view = page.locator(".kerasllm-widget").nth(2)
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[2]
                   ?.querySelector('.kw-attention')?.dataset.state === 'ready'""",
        timeout=120_000,
    )
    # A short sentence: its tokens are written along both axes of the map.
    assert view.locator(".kw-heatmap-rows").is_visible()
    assert view.locator(".kw-strip-token").count() == 11  # SmolLM2 adds no start token
    view.locator("select.kw-layer").select_option("5")
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[2]
                   ?.querySelector('.kw-attention')?.dataset.layer === '5'""",
        timeout=60_000,
    )
    # The selection is a traitlet: the kernel knows which layer is shown.
    shot(notebook, view.locator(".kw-root"), "attention-standalone")

    notebook.run_cell(3)
    table = page.locator(".kerasllm-widget").nth(3)
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[3]
                   ?.querySelectorAll('.kw-pre-group').length === 2""",
        timeout=60_000,
    )
    ids = table.locator(
        '.kw-pre-group[data-index="1"] tr[data-row="token_ids"] td'
    ).all_inner_texts()
    assert ids[0] == "128000" and ids[-1] == "0"  # start token first; padded at the end
    assert table.locator('.kw-pre-group[data-index="0"] .kw-cell-pad').count() >= 3
    shot(notebook, table.locator(".kw-root"), "preprocessor")


def test_a_long_map_arrives_shrunk_and_its_zoomed_region_at_full_resolution(notebook):
    page = notebook.page
    notebook.run_cell(4)
    view = page.locator(".kerasllm-widget").nth(4)
    attention = view.locator(".kw-attention")
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[4]
                   ?.querySelector('.kw-attention')?.dataset.state === 'ready'""",
        timeout=LOAD_TIMEOUT_S * 1000,
    )
    length = view.locator(".kw-strip-token").count()
    assert 600 < length <= 768
    # 768 padded tokens over at most 512 cells: blocks of 2 tokens a side, a quarter of the bytes.
    assert attention.get_attribute("data-block") == "2"
    cells = -(-length // 2)
    assert int(attention.get_attribute("data-bytes")) == cells * cells
    overlay = view.locator(".kw-heatmap-overlay")
    box = overlay.bounding_box()
    # Hovering the overview: a cell stands for a block of queries and keys.
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.75)
    tip = view.locator(".kw-heatmap-tip")
    assert "queries" in tip.inner_text() and "max" in tip.inner_text()
    assert view.locator(".kw-strip-token.kw-strip-focus").count() == 2
    for _ in range(8):  # about a sixth of the map on screen
        page.mouse.wheel(0, -100)
        page.wait_for_timeout(30)
    page.wait_for_function(
        """() => document.querySelectorAll('.kerasllm-widget')[4]
                   ?.querySelector('.kw-attention')?.dataset.detail""",
        timeout=120_000,
    )
    row0, row1, col0, col1 = map(int, attention.get_attribute("data-detail").split(","))
    assert 0 <= row0 < row1 <= length and 0 <= col0 < col1 <= length
    assert row1 - row0 < length  # a region, not the whole map again
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    text = tip.inner_text()
    assert "query " in text and "queries" not in text  # one token at full resolution
    assert view.locator(".kw-strip-token.kw-strip-focus").count() == 1
    pixels = page.evaluate(
        """() => {
            const canvas = document.querySelectorAll('.kerasllm-widget')[4].querySelector('.kw-heatmap-canvas');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let inked = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i] < 240 || data[i + 1] < 240) inked++;
            return { inked, total: data.length / 4 };
        }"""
    )
    assert pixels["inked"] > 0.02 * pixels["total"], pixels
    shot(notebook, view.locator(".kw-root"), "attention-long-zoomed")
    page.mouse.dblclick(box["x"] + 5, box["y"] + box["height"] - 5)
    shot(notebook, view.locator(".kw-root"), "attention-long")
