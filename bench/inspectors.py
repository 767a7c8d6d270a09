"""What the attention inspector costs, on SmolLM2-135M-Instruct (30 layers, 9 heads), for T tokens.

Prints, for each length T:

- in the kernel, on the path the views take (one head or the head average, 8-bit codes): the
  first view (layer 0), another head, a deep layer cold (the forward pass up to it), the whole
  forward pass (what runs in the background once a view opens), a view of a prepared layer
  (beside the same map taken the way the views took it before: every head in float32), the
  thumbnails of a layer, the pass over the conversation grown by a reply (the prefix reused), the
  first use of a new length (compilation); beside them transformers' eager forward pass with
  ``output_attentions=True`` (every layer at once: what bertviz is fed) and the ratio;
- on the wire: bytes per head view and per layer (8-bit codes), and the same head as a JSON list
  of floats for contrast;
- in the browser (JupyterLab + headless Chromium, the harness of tests/browser): time from asking
  for a map to the map drawn: the first view, another head, then the time until the background
  forward pass has made every layer ready, a deep layer after it (the map as sent: shrunk to
  block maxima past 512 tokens), and the region on screen at full resolution once zoomed in;
- bertviz's `head_view` on the same attention, where bertviz is importable: the size of its HTML
  and whether headless Chromium draws it within a time limit. bertviz loads require.js, d3 and
  jQuery from a CDN; with --bertviz-js pointing at a folder holding them (npm packages d3@5,
  jquery@2, requirejs@2 installed with --prefix) those requests are served locally.

- the logit lens and attribution (section ``lens``, in bench/inspectors_lens.py): the logit
  lens at each length, gradient x input for one target at T = 1,024, integrated gradients with
  32 steps at T = 512, and captum's ``LayerIntegratedGradients`` on transformers beside them
  (time, peak memory, Pearson correlation of the scores with ours).

Figures only: nothing here passes or fails.

    .venv/bin/python bench/inspectors.py [--lengths 256 1024 2048] [--layer 15] [--no-browser]
        [--bertviz-path DIR] [--bertviz-js DIR] [--sections kernel browser bertviz lens]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from inspectors_lens import lens_figures, lens_table  # bench/inspectors_lens.py, beside this

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))
os.environ.setdefault("KERAS_BACKEND", "jax")

THUMBNAIL = 44  # the model view's thumbnail side, as js/attention/attention_view.ts asks
GROWTH = 200  # tokens a conversation grows by (a reply) for the prefix-reuse figure


def corpus_ids(model, length: int) -> list[int]:
    """``length`` token ids of real English (this repository's design notes, repeated as needed)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for extra in sorted((ROOT / "kerasllm_widget").rglob("*.py"))[:40]:
        text += "\n" + extra.read_text(encoding="utf-8")
    ids = [int(i) for i in model.preprocessor.tokenizer(text)]
    while len(ids) < length:
        ids += ids
    return ids[:length]


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def kernel_figures(model, lengths: list[int], layer: int, reference: bool) -> list[dict]:
    """What each view costs in the kernel, on the path the views take (one head, 8-bit codes)."""
    from kerasllm_widget import inspect

    rows = []
    backbone = model.backbone
    heads, layers = int(backbone.num_query_heads), len(backbone.transformer_layers)
    peer = reference_model() if reference else None
    for length in lengths:
        ids = corpus_ids(model, length + GROWTH)
        ids, grown_ids = ids[:length], ids
        # First use of a length: the programs of its bucket are compiled (once per bucket).
        warm = inspect.AttentionMaps(model, ids)
        _, compile_s = timed(
            lambda warm=warm: (
                [None for _ in iter(warm.warm_up, False)],
                warm.thumbnails(1, THUMBNAIL),
            )
        )
        grown_warm = inspect.AttentionMaps(model, grown_ids, previous=warm)
        [None for _ in iter(grown_warm.warm_up, False)]
        maps = inspect.AttentionMaps(model, ids)
        quantized, first_s = timed(lambda maps=maps: maps.quantized(0, "mean"))
        _, head_s = timed(lambda maps=maps: maps.quantized(0, 1))

        def to_layer(maps=maps):
            while maps.prepared_layers <= layer:
                maps.prepare_next_layer()
            return maps.quantized(layer, "mean")

        _, deep_s = timed(to_layer)
        _, rest_s = timed(lambda maps=maps: [None for _ in iter(maps.prepare_next_layer, False)])
        _, prepared_s = timed(lambda maps=maps: maps.quantized(layer + 1, "mean"))
        _, prepared_head_s = timed(lambda maps=maps: maps.quantized(layers - 1, 2))
        _, thumbs_s = timed(lambda maps=maps: maps.thumbnails(layers - 1, THUMBNAIL))
        # The views before: every head of the layer in float32, then the head cut out and coded.
        _, all_heads_s = timed(
            lambda maps=maps: inspect.quantize(maps.layer(layer + 1).mean(0), bits=8)
        )
        grown = inspect.AttentionMaps(model, grown_ids, previous=maps)
        _, grown_s = timed(
            lambda grown=grown: [None for _ in iter(grown.prepare_next_layer, False)]
        )
        head = maps.head(layer, 0)
        json_bytes = len(json.dumps(head.tolist()).encode())
        row = {
            "T": length,
            "compile_s": compile_s,
            "first_view_s": first_s,
            "head_view_s": head_s,
            "deep_cold_s": deep_s,
            "pass_s": deep_s + rest_s,
            "prepared_view_s": prepared_s,
            "prepared_head_s": prepared_head_s,
            "all_heads_s": all_heads_s,
            "thumbnails_s": thumbs_s,
            "grown_pass_s": grown_s,
            "head_bytes": quantized.nbytes,
            "layer_bytes": heads * quantized.nbytes,
            "model_view_bytes": layers * heads * min(length, THUMBNAIL) ** 2,
            "head_json_bytes": json_bytes,
        }
        print(
            f"T={length:5d}  first view (layer 0, mean) {first_s:5.2f} s · another head {head_s:5.2f} s · "
            f"layer {layer} cold {deep_s:5.2f} s · whole pass {row['pass_s']:5.2f} s · after it: "
            f"a layer {prepared_s:5.2f} s (every head in float32, as before: {all_heads_s:5.2f} s) · "
            f"a head {prepared_head_s:5.2f} s · thumbnails {thumbs_s:5.2f} s · "
            f"+{GROWTH} tokens: pass {grown_s:5.2f} s (reused {grown.reused_tokens}) · "
            f"first use of the length {compile_s:5.2f} s",
            flush=True,
        )
        if peer is not None:
            row["reference_s"] = reference_seconds(peer, ids)
            print(
                f"T={length:5d}  transformers eager, output_attentions=True (every layer, one pass): "
                f"{row['reference_s']:6.2f} s · ours, whole pass + one view "
                f"{row['pass_s'] + prepared_s:6.2f} s "
                f"(ratio {row['reference_s'] / (row['pass_s'] + prepared_s):4.2f}x) · "
                f"ours, a view once prepared {prepared_s:5.2f} s "
                f"(ratio {row['reference_s'] / prepared_s:5.0f}x)",
                flush=True,
            )
        rows.append(row)
        del maps, grown, warm
    return rows


def reference_model(attention: str = "eager"):
    """transformers' own SmolLM2 from the same GGUF, with eager attention by default (the one
    that returns the probabilities: what bertviz is fed)."""
    import torch
    from transformers import AutoModelForCausalLM

    from kerasllm_widget.checkpoints.presets import embedded_smollm2_path

    path = embedded_smollm2_path()
    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation=attention
    ).eval()


def reference_seconds(peer, ids: list[int]) -> float:
    import torch

    with torch.no_grad():
        tensor = torch.tensor([ids])
        peer(input_ids=tensor[:, :8], output_attentions=True)  # warm-up
        _, seconds = timed(lambda: peer(input_ids=tensor, output_attentions=True))
    return seconds


def browser_figures(model, lengths: list[int], layer: int, timeout_s: float) -> list[dict]:
    import harness as H

    texts = {
        length: model.preprocessor.tokenizer.detokenize(corpus_ids(model, length))
        for length in lengths
    }
    root = Path(tempfile.mkdtemp(prefix="bench-inspect-"))
    (root / "texts.json").write_text(
        json.dumps({str(k): v for k, v in texts.items()}), encoding="utf-8"
    )
    cells = [
        "import json\n"
        "from kerasllm_widget import Llama3CausalLM\n"
        "from kerasllm_widget.widgets.attention_view import AttentionView\n"
        'model = Llama3CausalLM.from_preset("smollm2-135m-instruct")\n'
        "TEXTS = json.load(open('texts.json'))\n"
        "print('ready')",
        *[f"AttentionView(model, text=TEXTS['{length}'])" for length in lengths],
    ]
    H.write_notebook(root / "bench.ipynb", cells)
    rows = []
    with H.jupyter_server(root) as server, H.chromium_browser() as browser:
        notebook = H.open_notebook(
            browser, server.lab_url("bench.ipynb"), "lab", viewport=(1280, 1200)
        )
        page = notebook.page
        notebook.run_cell(0)
        notebook.cell_output_text(0, "ready", timeout_s=timeout_s)

        def wait(index: int, key: str, value: str) -> float:
            page.wait_for_function(
                """([i, key, value]) => {
                    const el = document.querySelectorAll('.kw-attention')[i];
                    return el && el.dataset.state === 'ready' && el.dataset[key] === value;
                }""",
                arg=[index, key, value],
                timeout=timeout_s * 1000,
            )
            return float(
                page.evaluate(
                    "(i) => document.querySelectorAll('.kw-attention')[i].dataset.drawnMs", index
                )
            )

        for index, length in enumerate(lengths):
            started = time.perf_counter()
            notebook.run_cell(index + 1)
            first = wait(index, "head", "mean")
            view = page.locator(".kw-attention").nth(index)
            view.locator("select.kw-head").select_option("0")
            other_head = wait(index, "head", "0")
            # The forward pass goes on in the background from the moment the view opened.
            page.wait_for_function(
                """([i, n]) => {
                    const el = document.querySelectorAll('.kw-attention')[i];
                    return el && Number(el.dataset.readyLayers) >= n;
                }""",
                arg=[index, len(model.backbone.transformer_layers)],
                timeout=timeout_s * 1000,
            )
            pass_s = time.perf_counter() - started
            view.locator("select.kw-layer").select_option(str(layer))
            deep = wait(index, "layer", str(layer))
            status = view.locator(".kw-attn-status").inner_text()
            sent = int(view.get_attribute("data-bytes") or 0)
            # Zoomed in (eight wheel steps: about a sixth of the map), the region on screen comes
            # at full resolution; from asking for it (once the zoom settles) to drawn.
            zoom_ms = None
            if view.get_attribute("data-block") not in (None, "1"):
                box = view.locator(".kw-heatmap-overlay").bounding_box()
                page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7)
                for _ in range(8):
                    page.mouse.wheel(0, -100)
                    page.wait_for_timeout(30)
                page.wait_for_function(
                    "(i) => document.querySelectorAll('.kw-attention')[i].dataset.detail",
                    arg=index,
                    timeout=timeout_s * 1000,
                )
                zoom_ms = float(view.get_attribute("data-detail-ms") or "nan")
                view.screenshot(path=str(root / f"attention-{length}-zoomed.png"))
                page.mouse.dblclick(box["x"] + 10, box["y"] + 10)
            rows.append(
                {
                    "T": length,
                    "first_ms": first,
                    "other_head_ms": other_head,
                    "deep_layer_ms": deep,
                    "pass_s": pass_s,
                    "sent_bytes": sent,
                    "zoom_ms": zoom_ms,
                }
            )
            zoomed = "" if zoom_ms is None else f" · zoomed region {zoom_ms:5.0f} ms"
            print(
                f"T={length:5d}  browser: first view {first:8.0f} ms · another head {other_head:6.0f} ms · "
                f"every layer ready {pass_s:6.1f} s after the cell ran · then layer {layer} "
                f"{deep:6.0f} ms ({sent / 1e3:.0f} KB sent){zoomed}   ({status})",
                flush=True,
            )
            view.screenshot(path=str(root / f"attention-{length}.png"))
        page.context.close()
        server.shutdown_kernels()
    print(f"screenshots in {root}")
    return rows


def bertviz_figures(
    model, lengths: list[int], layer: int, js_dir: str | None, timeout_s: float, max_length: int
) -> list[dict]:
    try:
        from bertviz import head_view
    except ImportError:
        print("bertviz is not importable: pip install --no-deps bertviz (or pass --bertviz-path)")
        return []
    import harness as H
    import torch

    from kerasllm_widget import inspect
    from kerasllm_widget.inspect.pieces import pieces

    local = {}
    if js_dir:
        base = Path(js_dir) / "node_modules"
        local = {
            "require.min.js": base / "requirejs" / "require.js",
            "d3.min.js": base / "d3" / "dist" / "d3.min.js",
            "jquery.min.js": base / "jquery" / "dist" / "jquery.min.js",
        }
    rows = []
    with H.chromium_browser() as browser:
        for length in lengths:
            if length > max_length and rows:
                # Its HTML holds every weight as decimal text: past max_length the bench does not
                # build it (gigabytes of Python floats) and scales the last size by T^2 instead.
                last = rows[-1]
                estimate = last["html_bytes"] * (length / last["T"]) ** 2
                rows.append(
                    {
                        "T": length,
                        "html_bytes": estimate,
                        "build_s": float("nan"),
                        "rendered": None,
                        "render_s": 0.0,
                    }
                )
                print(
                    f"T={length:5d}  bertviz head_view, one layer: HTML ~{estimate / 1e6:.0f} MB (estimated; not built)"
                )
                continue
            ids = corpus_ids(model, length)
            probs = inspect.AttentionMaps(model, ids).layer(layer)
            tokens = pieces(model.preprocessor.tokenizer, ids)
            html, build_s = timed(
                lambda probs=probs, tokens=tokens: (
                    head_view([torch.tensor(probs[None])], tokens, html_action="return").data
                )
            )
            size = len(html.encode())
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            crashed = []
            page.on("crash", lambda _page, crashed=crashed: crashed.append(True))
            # A file, not set_content: hundreds of megabytes through the driver's pipe would
            # time the transfer, not the page.
            html_path = Path(tempfile.mkdtemp(prefix="bertviz-")) / f"head_view_{length}.html"
            html_path.write_text(f"<html><body>{html}</body></html>", encoding="utf-8")
            del html

            def serve(route, request):
                name = request.url.rsplit("/", 1)[-1]
                name = name if name.endswith(".js") else name + ".js"
                path = local.get(name)
                if path is None or not path.is_file():
                    route.abort()
                else:
                    route.fulfill(path=str(path), content_type="application/javascript")

            page.route("https://cdnjs.cloudflare.com/**", serve)
            started = time.perf_counter()
            rendered = False
            try:
                page.goto(html_path.as_uri(), wait_until="commit", timeout=timeout_s * 1000)
                page.wait_for_function(
                    "(n) => document.querySelectorAll('svg text').length >= n",
                    arg=min(length, 50),
                    timeout=timeout_s * 1000,
                )
                rendered = True
            except Exception as error:  # a page that never draws is the finding, not a crash
                note = "the page crashed" if crashed else type(error).__name__
            drawn_s = time.perf_counter() - started
            rows.append(
                {
                    "T": length,
                    "html_bytes": size,
                    "build_s": build_s,
                    "rendered": rendered,
                    "render_s": drawn_s,
                }
            )
            verdict = (
                f"drawn in {drawn_s:.1f} s"
                if rendered
                else f"not drawn after {drawn_s:.0f} s ({note})"
            )
            print(
                f"T={length:5d}  bertviz head_view, one layer: HTML {size / 1e6:8.1f} MB "
                f"(built in {build_s:.1f} s) · {verdict}",
                flush=True,
            )
            page.context.close()
            html_path.unlink()
    return rows


def bertviz_verdict(row: dict) -> str:
    if not row:
        return "–"
    if row["rendered"] is None:
        return "not tried"
    return (
        f"yes, {row['render_s']:.1f} s"
        if row["rendered"]
        else f"no (not after {row['render_s']:.0f} s)"
    )


def table(kernel: list[dict], browser: list[dict], bertviz: list[dict], layer: int) -> None:
    def mb(n):
        return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"

    print(
        f"\n| T | kernel: first view | layer {layer} cold | whole pass | +{GROWTH} tokens | a prepared "
        "layer | as before (every head f32) | transformers eager (all layers) | head view sent "
        "| model view sent | head as JSON | browser: first view | another head | every layer ready "
        f"| then layer {layer} | bertviz HTML (1 layer) | bertviz draws |"
    )
    print("|" + "---|" * 17)
    by_t = {r["T"]: r for r in browser}
    bv = {r["T"]: r for r in bertviz}
    kn = {r["T"]: r for r in kernel}
    for length in sorted(set(by_t) | set(bv) | set(kn)):
        row, b, v = kn.get(length, {}), by_t.get(length, {}), bv.get(length, {})

        def k(name, fmt, row=row):
            return fmt(row[name]) if name in row else "–"

        def seconds(x):
            return f"{x:.2f} s"

        cells = [
            str(length),
            k("first_view_s", seconds),
            k("deep_cold_s", seconds),
            k("pass_s", seconds),
            k("grown_pass_s", seconds),
            k("prepared_view_s", seconds),
            k("all_heads_s", seconds),
            k("reference_s", seconds),
            k("head_bytes", mb),
            k("model_view_bytes", mb),
            k("head_json_bytes", mb),
            f"{b['first_ms']:.0f} ms" if b else "–",
            f"{b['other_head_ms']:.0f} ms" if b else "–",
            f"{b['pass_s']:.1f} s" if b else "–",
            f"{b['deep_layer_ms']:.0f} ms" if b else "–",
            (("~" if v["rendered"] is None else "") + mb(v["html_bytes"])) if v else "–",
            bertviz_verdict(v),
        ]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--layer", type=int, default=15, help="the deep layer to time (default 15)")
    parser.add_argument("--no-browser", action="store_true", help="kernel and wire figures only")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip transformers' eager pass beside ours"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["kernel", "browser", "bertviz", "lens"],
        choices=["kernel", "browser", "bertviz", "lens"],
        help="which figures to take (default: all)",
    )
    parser.add_argument(
        "--gradient-length", type=int, default=1024, help="T for gradient x input (1,024)"
    )
    parser.add_argument(
        "--integrated-length", type=int, default=512, help="T for integrated gradients (512)"
    )
    parser.add_argument("--steps", type=int, default=32, help="integrated gradients' steps")
    parser.add_argument(
        "--captum-batch", type=int, default=4, help="captum's internal_batch_size (4)"
    )
    parser.add_argument(
        "--bertviz-path", help="a folder holding the bertviz package (pip --target)"
    )
    parser.add_argument("--bertviz-js", help="a folder with node_modules/{d3,jquery,requirejs}")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for one view")
    parser.add_argument(
        "--bertviz-max-length", type=int, default=1024, help="longest T given to bertviz"
    )
    args = parser.parse_args()
    if args.bertviz_path:
        sys.path.insert(0, args.bertviz_path)

    from kerasllm_widget import Llama3CausalLM

    model = Llama3CausalLM.from_preset("smollm2-135m-instruct")
    print(
        f"SmolLM2-135M-Instruct: {len(model.backbone.transformer_layers)} layers x "
        f"{model.backbone.num_query_heads} heads, {model.info['device']}, {os.cpu_count()} CPUs\n"
    )
    sections = set(args.sections) - ({"browser", "bertviz"} if args.no_browser else set())
    kernel = (
        kernel_figures(model, args.lengths, args.layer, not args.no_reference)
        if "kernel" in sections
        else []
    )
    browser = (
        browser_figures(model, args.lengths, args.layer, args.timeout)
        if "browser" in sections
        else []
    )
    bertviz = (
        []
        if "bertviz" not in sections
        else bertviz_figures(
            model,
            args.lengths,
            args.layer,
            args.bertviz_js,
            min(args.timeout, 120),
            args.bertviz_max_length,
        )
    )
    lens = (
        lens_figures(
            model,
            lambda length: corpus_ids(model, length),
            reference_model,
            args.lengths,
            args.gradient_length,
            args.integrated_length,
            args.steps,
            args.captum_batch,
        )
        if "lens" in sections
        else []
    )
    if kernel or browser or bertviz:
        table(kernel, browser, bertviz, args.layer)
    lens_table(lens)


if __name__ == "__main__":
    main()
