"""What the chat panel costs on top of the engine, measured in a real browser.

Starts JupyterLab on loopback with headless Chromium (the harness of tests/browser), builds a
ChatWidget on SmolLM2-135M-Instruct with greedy decoding, and for the same prompt measures

- in the browser: time from pressing Enter to the first token drawn, and tokens drawn per second
  (from the first drawn token to the last);
- in the kernel, without the widget: `ChatState.stream` time to first token and the engine's
  decode tokens per second;

then prints them side by side with the widget's overhead. Figures only: nothing here passes or
fails.

    .venv/bin/python bench/widget.py [--runs 3] [--max-new-tokens 128] [--preset smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "browser"))
import harness as H  # noqa: E402

PROMPT = "Write a short story about a robot who wants to learn to paint."

# Records, in the page, when Enter was pressed in the chat input and when the streaming reply's
# text changed on screen.
TIMING_JS = """
() => {
  const root = document.querySelector('.kerasllm-widget');
  const t = { enter: null, first: null, last: null, draws: 0 };
  window.__kwTiming = t;
  root.querySelector('.kw-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && t.enter === null) t.enter = performance.now();
  }, { capture: true, once: true });
  let last = '';
  const observer = new MutationObserver(() => {
    const el = root.querySelector('.kw-assistant[data-status="streaming"] .kw-markdown');
    const text = el ? el.textContent : '';
    if (!text || text === last) return;
    last = text;
    const now = performance.now();
    if (t.first === null) t.first = now;
    t.last = now;
    t.draws += 1;
  });
  observer.observe(root, { subtree: true, childList: true, characterData: true });
  window.__kwStopTiming = () => observer.disconnect();
}
"""


STOP_PROMPT = "Write a very long story about a dragon who learns to program computers."

# Records when Stop was clicked and when the reply being generated stopped streaming on screen.
STOP_JS = """
() => {
  const root = document.querySelector('.kerasllm-widget');
  const t = { clicked: null, ended: null };
  window.__kwStop = t;
  root.querySelector('.kw-send').addEventListener('click', (e) => {
    if (e.currentTarget.dataset.mode === 'stop' && t.clicked === null) t.clicked = performance.now();
  }, { capture: true });
  const observer = new MutationObserver(() => {
    if (t.clicked === null || t.ended !== null) return;
    if (!root.querySelector('.kw-assistant[data-status="streaming"]')) {
      t.ended = performance.now();
      observer.disconnect();
    }
  });
  observer.observe(root, { subtree: true, childList: true, attributes: true });
}
"""


def notebook_cells(preset: str, max_new_tokens: int, runs: int) -> list[str]:
    settings = f"temperature=0.0, seed=0, max_new_tokens={max_new_tokens}"
    return [
        "from kerasllm_widget import ChatWidget\n"
        f"chat = ChatWidget.from_preset({preset!r}, {settings})\n"
        "reported = []  # the engine's own figures for each reply made through the widget\n"
        "chat.on_done(lambda event: reported.append(event.to_dict()))\n"
        "chat",
        # The engine alone, through a ChatState of its own on the same model and settings.
        "import json, statistics, time\n"
        "from kerasllm_widget.chat.chat_state import ChatState\n"
        "from kerasllm_widget.generation.events import TokenEvent\n"
        "ttfts, rates, counts = [], [], []\n"
        f"for _ in range({runs}):\n"
        "    state = ChatState(chat.chat_state.model)\n"
        "    start, first = time.perf_counter(), None\n"
        f"    for event in state.stream({PROMPT!r}, {settings}):\n"
        "        if isinstance(event, TokenEvent) and first is None and event.text:\n"
        "            first = time.perf_counter() - start\n"
        "    ttfts.append(first); rates.append(event.decode_tokens_per_s)\n"
        "    counts.append(event.generated_tokens)\n"
        "import threading\n"
        "stops = []\n"
        f"for _ in range({runs}):\n"
        "    state, cancel, asked = ChatState(chat.chat_state.model), threading.Event(), None\n"
        f"    for event in state.stream({STOP_PROMPT!r}, temperature=0.0, seed=0,\n"
        "                              max_new_tokens=400, cancel_event=cancel):\n"
        "        if isinstance(event, TokenEvent) and event.index == 20 and asked is None:\n"
        "            asked = time.perf_counter(); cancel.set()\n"
        "    stops.append(time.perf_counter() - asked)\n"
        "print('ENGINE', json.dumps({'ttft_s': statistics.median(ttfts),\n"
        "    'decode_tok_s': statistics.median(rates), 'tokens': statistics.median(counts),\n"
        "    'stop_s': statistics.median(stops)}))",
        # What the engine reported for the replies made through the widget.
        "print('WIDGET_ENGINE', json.dumps(reported))",
    ]


def measure_once(page) -> dict:
    panel = page.locator(".kerasllm-widget").first
    page.evaluate(TIMING_JS)
    box = panel.locator(".kw-input")
    box.click()
    box.fill(PROMPT)
    box.press("Enter")
    page.wait_for_function(
        """() => {
            const all = document.querySelectorAll('.kerasllm-widget .kw-assistant');
            const s = all.length ? all[all.length - 1].dataset.status : null;
            return s === 'done' || s === 'cancelled' || s === 'error';
        }""",
        timeout=600_000,
    )
    timing = page.evaluate("() => { window.__kwStopTiming(); return window.__kwTiming; }")
    meta = panel.locator(".kw-assistant").last.locator(".kw-meta").inner_text()
    tokens = int(re.search(r"(\d+) tokens", meta).group(1))
    panel.locator(".kw-clear").click()  # the next run starts from the same empty conversation
    page.wait_for_function(
        "() => document.querySelectorAll('.kerasllm-widget .kw-assistant').length === 0"
    )
    drawn_s = (timing["last"] - timing["first"]) / 1000
    return {
        "ttft_s": (timing["first"] - timing["enter"]) / 1000,
        "drawn_tok_s": (tokens - 1) / drawn_s if drawn_s > 0 else float("nan"),
        "tokens": tokens,
        "draws": timing["draws"],
    }


def measure_stop(page) -> float:
    """Seconds from clicking Stop to the reply no longer streaming on screen."""
    panel = page.locator(".kerasllm-widget").first
    page.evaluate(STOP_JS)
    box = panel.locator(".kw-input")
    box.click()
    box.fill(STOP_PROMPT)
    box.press("Enter")
    # Stop after about 20 tokens, as the engine-alone figure does.
    page.wait_for_function(
        """() => {
            const el = document.querySelector(
                '.kerasllm-widget .kw-assistant[data-status="streaming"] .kw-markdown');
            return el && el.textContent.split(/\\s+/).length > 15;
        }""",
        timeout=600_000,
    )
    panel.locator(".kw-send").click()
    page.wait_for_function("() => window.__kwStop.ended !== null", timeout=120_000)
    timing = page.evaluate("() => window.__kwStop")
    panel.locator(".kw-clear").click()
    page.wait_for_function(
        "() => document.querySelectorAll('.kerasllm-widget .kw-assistant').length === 0"
    )
    return (timing["ended"] - timing["clicked"]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    if H.chromium_path() is None:
        sys.exit("chromium is not installed (apt-get install chromium)")

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        H.write_notebook(
            root / "bench.ipynb", notebook_cells(args.preset, args.max_new_tokens, args.runs)
        )
        with H.jupyter_server(root) as server, H.chromium_browser() as browser:
            notebook = H.open_notebook(browser, server.lab_url("bench.ipynb"), "lab")
            page = notebook.page
            started = time.monotonic()
            notebook.run_cell(0)
            page.wait_for_function(
                "() => document.querySelector('.kerasllm-widget .kw-status')"
                "?.dataset.state === 'ready'",
                timeout=600_000,
            )
            print(f"model loaded in {time.monotonic() - started:.1f} s; warming up")
            measure_once(page)  # compiles the prompt length and decode loop
            browser_runs = [measure_once(page) for _ in range(args.runs)]
            measure_stop(page)  # warm-up for the story's prompt length
            stop_runs = [measure_stop(page) for _ in range(args.runs)]
            notebook.run_cell(1)
            engine_line = notebook.cell_output_text(1, "ENGINE", timeout_s=600)
            engine = json.loads(engine_line.split("ENGINE", 1)[1])
            notebook.run_cell(2)
            reported = json.loads(
                notebook.cell_output_text(2, "WIDGET_ENGINE").split("WIDGET_ENGINE", 1)[1]
            )
            server.shutdown_kernels()

    def median(key: str) -> float:
        return statistics.median(run[key] for run in browser_runs)

    widget_ttft, widget_rate = median("ttft_s"), median("drawn_tok_s")
    # Replies 2 .. runs+1 are the measured ones (the first warmed up; the stories come after).
    measured = reported[1 : 1 + args.runs]
    inside_ttft = statistics.median(r["time_to_first_token_s"] for r in measured)
    inside_rate = statistics.median(r["decode_tokens_per_s"] for r in measured)
    stop_s = statistics.median(stop_runs)
    # The widget's cost is measured against the engine's own figures for the same replies: the
    # browser shares this machine's cores, so "engine alone" (run with the browser idle) is a
    # reference for the machine, not for the cost.
    ttft_cost_ms = (widget_ttft - inside_ttft) * 1000
    rate_cost = 1 - widget_rate / inside_rate

    def row(label: str, alone: float, inside: float, drawn: float, cost: str) -> None:
        print(f"{label:28}{alone:>13.3f}{inside:>17.3f}{drawn:>17.3f}{cost:>14}")

    print()
    print(f"prompt: {PROMPT!r}; greedy, max_new_tokens={args.max_new_tokens}")
    print(f"median of {args.runs} runs after one warm-up; tokens per reply ~{median('tokens'):.0f}")
    print(
        f"{'':28}{'engine alone':>13}{'engine, widget':>17}{'drawn, browser':>17}{'widget cost':>14}"
    )
    row(
        "time to first token (s)",
        engine["ttft_s"],
        inside_ttft,
        widget_ttft,
        f"{ttft_cost_ms:+.0f} ms",
    )
    row(
        "decode tokens per second",
        engine["decode_tok_s"],
        inside_rate,
        widget_rate,
        f"{rate_cost * 100:+.1f} %",
    )
    print(f"{'Stop -> reply ended (s)':28}{engine['stop_s']:>13.3f}{'':>17}{stop_s:>17.3f}")
    print(f"draws per reply (batches shown): {median('draws'):.0f}")
    print(
        "targets: under 100 ms added to the first token, under 5% of decode throughput -> "
        f"{'met' if ttft_cost_ms < 100 else 'NOT met'}, {'met' if rate_cost < 0.05 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
