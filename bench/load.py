"""Load time and peak memory: our on-the-fly conversion beside transformers, in one run.

Each loader runs in its own fresh process so that peak resident memory (VmHWM) is its own. The
fixed overhead (Python, JAX or torch runtime) is measured in the same process just before loading
and subtracted, so the ratio shown is what loading adds per byte of final weights.

    python bench/load.py                      # the embedded SmolLM2 GGUF
    python bench/load.py --preset PATH_OR_URI --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ.setdefault("KERAS_BACKEND", "jax")

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        return 0

    which, preset, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    if which == "ours":
        import jax, keras
        import kerasllm_widget
        from kerasllm_widget.checkpoints.presets import load_checkpoint
        from kerasllm_widget.checkpoints.convert import backbone_from_checkpoint
        jax.numpy.zeros(1).block_until_ready()  # start the runtime before the baseline
        base = rss("VmRSS")
        start = time.perf_counter()
        ckpt = load_checkpoint(preset)
        backbone = backbone_from_checkpoint(ckpt, dtype=dtype, progress=False)
        ckpt.close()
        for w in backbone.weights:
            w.value.block_until_ready()
        seconds = time.perf_counter() - start
        weight_bytes = sum(int(w.value.nbytes) for w in backbone.weights)
    else:
        import torch
        from pathlib import Path
        from transformers import AutoModelForCausalLM
        base = rss("VmRSS")
        start = time.perf_counter()
        path = Path(preset)
        torch_dtype = getattr(torch, dtype)
        if path.suffix == ".gguf":
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(preset, dtype=torch_dtype)
        seconds = time.perf_counter() - start
        weight_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values()
                           if p.data_ptr() not in ())
    peak = rss("VmHWM")
    print(json.dumps({"seconds": seconds, "weight_bytes": weight_bytes, "base": base, "peak": peak}))
    """
)


def run(which: str, preset: str, dtype: str) -> dict | None:
    proc = subprocess.run([sys.executable, "-c", CHILD, which, preset, dtype], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[{which}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="default: the embedded SmolLM2 GGUF")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    preset = args.preset
    if preset is None:
        from kerasllm_widget.checkpoints.presets import embedded_smollm2_path

        preset = str(embedded_smollm2_path())
    rows = {name: run(name, preset, args.dtype) for name in ("ours", "transformers")}
    mb = 1024 * 1024
    print(f"preset: {preset}  dtype: {args.dtype}")
    print(f"{'':14}{'load s':>9}{'weights MB':>12}{'peak-base MB':>14}{'(peak-base)/weights':>21}")
    for name, row in rows.items():
        if row is None:
            print(f"{name:14}{'unavailable':>9}")
            continue
        added = row["peak"] - row["base"]
        print(f"{name:14}{row['seconds']:9.2f}{row['weight_bytes'] / mb:12.1f}{added / mb:14.1f}"
              f"{added / row['weight_bytes']:21.2f}")
    if rows["ours"] and rows["transformers"]:
        print(f"load time ratio ours/transformers: {rows['ours']['seconds'] / rows['transformers']['seconds']:.2f}")


if __name__ == "__main__":
    main()
