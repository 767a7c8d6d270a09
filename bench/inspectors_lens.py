"""The logit lens and attribution on SmolLM2, for ``bench/inspectors.py --sections lens``.

Prints the logit lens at each length (first use, then a pass once compiled, the compact 16-bit
arrays, and "one view after the pass": building the answer a lens view receives from a computed
lens, its float16/int32 arrays and the text of each distinct id), gradient x input for one target (and another target of the same text: no
compilation), integrated gradients, and beside them captum's ``LayerIntegratedGradients`` on
transformers over the same text with the same baseline (the zero embedding) and rule
(midpoints): time, peak memory, and the Pearson correlation of its scores with ours. Peak
memory is the process's resident high-water mark (reset before each step) above its size when
the step began.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _memory_kb(key: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", status).group(1))


def measured(fn):
    """``(result, seconds, peak_mb)``: the peak is the resident high-water mark during ``fn``
    (reset first: Linux's clear_refs 5) above the resident size when it began, after freed
    memory went back to the system (glibc keeps it otherwise, and a second run would reuse it
    without showing)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _memory_kb("VmRSS")
    result, seconds = timed(fn)
    return result, seconds, max(0, _memory_kb("VmHWM") - before) / 1024


def lens_figures(
    model,
    corpus_ids: Callable[[int], list[int]],
    reference_model: Callable[[str], Any],
    lengths: list[int],
    gradient_length: int,
    integrated_length: int,
    steps: int,
    captum_batch: int,
) -> list[dict]:
    """The logit lens and attribution on SmolLM2, and captum beside them. ``corpus_ids(T)``:
    ``T`` token ids of real text; ``reference_model(attention)``: transformers' SmolLM2."""
    import numpy as np

    from kerasllm_widget import inspect
    from kerasllm_widget.inspect import attributions
    from kerasllm_widget.widgets.inspect_protocol import pack_arrays
    from kerasllm_widget.widgets.lens_requests import lens_arrays, lens_labels

    backbone = model.backbone
    layers, vocabulary = int(backbone.num_layers), int(backbone.vocabulary_size)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"logit lens and attribution ({os.cpu_count()} CPUs, load average {load}):", flush=True)
    rows = []
    for length in lengths:
        ids = corpus_ids(length)
        _, first_s, _ = measured(lambda ids=ids: inspect.logit_lens(model, ids, top_k=5))
        lens, pass_s, peak = measured(lambda ids=ids: inspect.logit_lens(model, ids, top_k=5))
        compact, view_s = timed(lens.compact)
        sent = sum(
            a.nbytes
            for a in (compact.top_ids, compact.top_probs, compact.target_rank, compact.entropy)
        )
        full = layers * length * vocabulary * 4
        rows.append(
            {
                "what": f"logit lens, top 5, T={length}",
                "first_s": first_s,
                "s": pass_s,
                "peak_mb": peak,
            }
        )
        print(
            f"logit lens T={length:5d}: first use {first_s:6.2f} s (compiles) · a pass {pass_s:6.2f} s "
            f"(forward + {layers} layers x {length} positions projected) · the view's arrays in "
            f"16 bits {view_s * 1e3:5.2f} ms, {sent / 1e3:7.1f} KB (the full [layers, T, vocabulary] "
            f"in float32 would be {full / 1e9:5.1f} GB) · peak +{peak:6.0f} MB",
            flush=True,
        )

        def view_payload(lens=lens):
            headers, buffers = pack_arrays(lens_arrays(lens))
            return buffers, lens_labels(lens, model.preprocessor.tokenizer)

        (buffers, labels), payload_s, payload_peak = measured(view_payload)
        sent = sum(memoryview(b).nbytes for b in buffers)
        rows.append(
            {
                "what": f"one lens view after the pass (its answer built), T={length}",
                "first_s": float("nan"),
                "s": payload_s,
                "peak_mb": payload_peak,
            }
        )
        print(
            f"one lens view after the pass T={length:5d}: answer built in {payload_s * 1e3:6.1f} ms "
            f"({sent / 1e3:7.1f} KB of float16/int32 arrays, {len(labels)} distinct token texts)",
            flush=True,
        )
    ids = corpus_ids(gradient_length)
    target = gradient_length - 1
    _, first_s, _ = measured(lambda: inspect.attribution(model, ids, target))
    _, again_s, peak = measured(lambda: inspect.attribution(model, ids, target // 2))
    rows.append(
        {
            "what": f"gradient x input, T={gradient_length}",
            "first_s": first_s,
            "s": again_s,
            "peak_mb": peak,
        }
    )
    print(
        f"gradient x input T={gradient_length}: first use {first_s:6.2f} s · another target of the "
        f"same text {again_s:6.2f} s (no compilation) · peak +{peak:6.0f} MB",
        flush=True,
    )
    ids = corpus_ids(integrated_length)
    target = integrated_length - 1
    batch = attributions.steps_per_batch(backbone, integrated_length, steps)

    def integrated(position):
        return inspect.attribution(model, ids, position, method="integrated_gradients", steps=steps)

    _, first_s, _ = measured(lambda: integrated(target))
    ours, again_s, peak = measured(lambda: integrated(target))
    rows.append(
        {
            "what": f"integrated gradients, {steps} steps, T={integrated_length}",
            "first_s": first_s,
            "s": again_s,
            "peak_mb": peak,
        }
    )
    print(
        f"integrated gradients {steps} steps T={integrated_length}: first use {first_s:6.2f} s · "
        f"again {again_s:6.2f} s ({batch} step(s) per pass) · peak +{peak:6.0f} MB",
        flush=True,
    )
    try:
        import captum  # noqa: F401
    except ImportError:
        print(
            "captum is not installed: pip install captum (it installs from PyPI with the CPU "
            "torch of the reference extra)",
            flush=True,
        )
        return rows
    peer = reference_model("sdpa")  # transformers' default, and its fastest on a CPU
    seconds, peak, scores = captum_integrated_gradients(peer, ids, target, steps, captum_batch)
    correlation = float(np.corrcoef(scores, ours)[0, 1])
    rows.append(
        {
            "what": f"captum LayerIntegratedGradients, {steps} steps, T={integrated_length}",
            "first_s": float("nan"),
            "s": seconds,
            "peak_mb": peak,
            "pearson": correlation,
        }
    )
    print(
        f"captum LayerIntegratedGradients on transformers, {steps} steps (riemann_middle, "
        f"internal batch {captum_batch}) T={integrated_length}: {seconds:6.2f} s · peak "
        f"+{peak:6.0f} MB · Pearson r with ours {correlation:.6f} · largest difference "
        f"{np.abs(scores - ours).max() / np.abs(ours).max():.1e} of the largest score",
        flush=True,
    )
    return rows


def captum_integrated_gradients(peer, ids: list[int], target: int, steps: int, batch: int):
    """captum's LayerIntegratedGradients over transformers' embedding layer, with the zero
    embedding as baseline: the layer is wrapped so that ids shifted past the vocabulary embed
    to zeros, and those are the baseline ids. ``(seconds, peak_mb, scores)``."""
    import torch
    from captum.attr import LayerIntegratedGradients

    embedding = peer.model.embed_tokens
    vocabulary = embedding.num_embeddings

    class ZeroBaselineEmbedding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            real = input_ids < vocabulary
            return self.inner(input_ids % vocabulary) * real[..., None]

    peer.model.embed_tokens = ZeroBaselineEmbedding(embedding)
    prefix = torch.tensor([ids[:target]])
    wanted = ids[target]

    def log_prob(input_ids):
        # logits_to_keep=1: the output projection of the last position only, as ours does.
        logits = peer(input_ids=input_ids, logits_to_keep=1).logits[:, -1]
        return torch.log_softmax(logits, dim=-1)[:, wanted]

    attribution = LayerIntegratedGradients(log_prob, peer.model.embed_tokens)

    def run(prefix=prefix, steps=steps):
        result = attribution.attribute(
            prefix,
            baselines=prefix + vocabulary,
            n_steps=steps,
            method="riemann_middle",
            internal_batch_size=batch,
        )
        return result.sum(-1)[0].detach().numpy()

    run(prefix[:, :8], 2)  # warm-up: torch's first calls set things up once
    scores, seconds, peak = measured(run)
    return seconds, peak, scores


def lens_table(rows: list[dict]) -> None:
    if not rows:
        return
    print(
        "\n| lens and attribution (SmolLM2) | first use | once compiled | peak memory | Pearson r with ours |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        first = "–" if row["first_s"] != row["first_s"] else f"{row['first_s']:.2f} s"
        pearson = f"{row['pearson']:.6f}" if "pearson" in row else "–"
        print(
            f"| {row['what']} | {first} | {row['s']:.2f} s | +{row['peak_mb']:.0f} MB | {pearson} |"
        )
