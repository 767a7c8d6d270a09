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


def notebook_cells(preset: str, max_new_tokens: int, runs: int) -> list[str]:
    settings = f"temperature=0.0, seed=0, max_new_tokens={max_new_tokens}"
    return [
        "from kerasllm_widget import ChatWidget\n"
        f"chat = ChatWidget.from_preset({preset!r}, {settings})\n"
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
        "print('ENGINE', json.dumps({'ttft_s': statistics.median(ttfts),\n"
        "    'decode_tok_s': statistics.median(rates), 'tokens': statistics.median(counts)}))",
        # What the engine reported for the replies made through the widget.
        "stats = [e['stats'] for e in chat.transcript if e['role'] == 'assistant']\n"
        "print('WIDGET_ENGINE', json.dumps(stats))",
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
    tokens = int(meta.split(" tokens")[0].split("·")[-1].strip())
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
    in_widget_rate = statistics.median(
        s["decode_tokens_per_s"] for s in reported[1:] if s.get("decode_tokens_per_s")
    )
    print()
    print(f"prompt: {PROMPT!r}; greedy, max_new_tokens={args.max_new_tokens}; ")
    print(f"median of {args.runs} runs after one warm-up; tokens per reply ~{median('tokens'):.0f}")
    print(f"{'':34}{'engine alone':>14}{'in the widget':>16}{'widget cost':>14}")
    ttft_cost_ms = (widget_ttft - engine["ttft_s"]) * 1000
    print(
        f"{'time to first token (s)':34}{engine['ttft_s']:>14.3f}{widget_ttft:>16.3f}"
        f"{ttft_cost_ms:>+11.0f} ms"
    )
    rate_cost = 1 - widget_rate / engine["decode_tok_s"]
    print(
        f"{'decode tokens per second':34}{engine['decode_tok_s']:>14.1f}{widget_rate:>16.1f}"
        f"{rate_cost * 100:>+12.1f} %"
    )
    print(f"{'engine tok/s while in the widget':34}{'':>14}{in_widget_rate:>16.1f}")
    print(f"draws per reply (batches shown): {median('draws'):.0f}")
    print(
        "targets: under 100 ms added to the first token, under 5% of decode throughput "
        f"-> {'met' if ttft_cost_ms < 100 else 'NOT met'}, {'met' if rate_cost < 0.05 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
