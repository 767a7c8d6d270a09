"""Load time and peak memory: our on-the-fly conversion beside transformers, in one run.

Each loader runs in its own fresh process so that peak resident memory (VmHWM) is its own. The
fixed overhead (Python, JAX or torch runtime) is measured in the same process just before loading
and subtracted, so the ratio shown is what loading adds per byte of final weights. "after first
use" is the same ratio once every weight has been read: transformers maps a safetensors file whose
dtype is the one asked for and reads its pages only then, so its load peak leaves the weights out.

By default three checkpoints of SmolLM2-135M-Instruct are loaded: the embedded GGUF, and float32
safetensors copies of it written first into a temporary folder, one as a single
``model.safetensors`` and one as shards with an index.

    python bench/load.py                                  # GGUF, safetensors, sharded safetensors
    python bench/load.py --checkpoints gguf --dtype bfloat16
    python bench/load.py --preset PATH_OR_URI             # one checkpoint of your own
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

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
        from kerasllm_widget.models.llama3_backbone import Llama3Backbone
        jax.numpy.zeros(1).block_until_ready()  # start the runtime before the baseline
        base = rss("VmRSS")
        start = time.perf_counter()
        ckpt = load_checkpoint(preset)
        backbone = Llama3Backbone.from_checkpoint(ckpt, dtype=dtype, progress=False)
        ckpt.close()
        for w in backbone.weights:
            w.value.block_until_ready()
        seconds = time.perf_counter() - start
        weight_bytes = sum(int(w.value.nbytes) for w in backbone.weights)
        peak = rss("VmHWM")
        for w in backbone.weights:  # first use: every weight read once
            float(jax.numpy.sum(w.value))
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
        # Tied embeddings appear twice in the state dict: count each storage once.
        unique = {p.data_ptr(): p for p in model.state_dict().values()}
        weight_bytes = sum(p.numel() * p.element_size() for p in unique.values())
        peak = rss("VmHWM")
        with torch.no_grad():  # first use: every weight read once
            for p in unique.values():
                float(p.sum())
    used = rss("VmHWM")
    print(json.dumps({"seconds": seconds, "weight_bytes": weight_bytes, "base": base, "peak": peak,
                      "used": used}))
    """
)

# Writes float32 safetensors copies of a GGUF with our exporter (in a child, so that this process
# stays small): argv = gguf path, folder, max shard size.
WRITE_COPY = textwrap.dedent(
    """
    import os, sys
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from kerasllm_widget import Llama3Backbone
    backbone = Llama3Backbone.from_preset(sys.argv[1], dtype="float32")
    backbone.save_to_preset(sys.argv[2], max_shard_size=sys.argv[3])
    """
)

CHECKPOINTS = ("gguf", "safetensors", "sharded")


def run(which: str, preset: str, dtype: str) -> dict | None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, which, preset, dtype], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(f"[{which}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_copy(gguf: str, folder: Path, max_shard_size: str) -> str:
    subprocess.run(
        [sys.executable, "-c", WRITE_COPY, gguf, str(folder), max_shard_size],
        check=True,
        capture_output=True,
    )
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default=None, help="one checkpoint of your own instead")
    parser.add_argument(
        "--checkpoints",
        default=",".join(CHECKPOINTS),
        help=f"which of {', '.join(CHECKPOINTS)} (default: all)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    wanted = [name.strip() for name in args.checkpoints.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(CHECKPOINTS))
    if unknown:
        parser.error(f"unknown checkpoint(s) {unknown}; pick from {', '.join(CHECKPOINTS)}")

    mb = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        if args.preset is not None:
            presets = {"preset": args.preset}
        else:
            from kerasllm_widget.checkpoints.presets import embedded_smollm2_path

            gguf = str(embedded_smollm2_path())
            presets = {}
            for name in wanted:
                if name == "gguf":
                    presets["gguf (Q4_1)"] = gguf
                elif name == "safetensors":
                    presets["safetensors"] = write_copy(gguf, Path(scratch) / "single", "5GB")
                else:
                    folder = write_copy(gguf, Path(scratch) / "sharded", "150MB")
                    presets[f"sharded ({len(list(Path(folder).glob('*.safetensors')))})"] = folder
        print(f"dtype: {args.dtype}")
        for label, preset in presets.items():
            print(f"{label}: {preset}")
        print(
            f"{'checkpoint':16}{'loader':14}{'load s':>9}{'weights MB':>12}{'peak-base MB':>14}"
            f"{'(peak-base)/weights':>21}{'after first use':>17}"
        )
        for label, preset in presets.items():
            rows = {name: run(name, preset, args.dtype) for name in ("ours", "transformers")}
            for name, row in rows.items():
                if row is None:
                    print(f"{label:16}{name:14}{'unavailable':>9}")
                    continue
                added = row["peak"] - row["base"]
                used = (row["used"] - row["base"]) / row["weight_bytes"]
                print(
                    f"{label:16}{name:14}{row['seconds']:9.2f}{row['weight_bytes'] / mb:12.1f}"
                    f"{added / mb:14.1f}{added / row['weight_bytes']:21.2f}{used:17.2f}"
                )
            if rows["ours"] and rows["transformers"]:
                ours, theirs = rows["ours"], rows["transformers"]
                memory = (ours["peak"] - ours["base"]) / (theirs["peak"] - theirs["base"])
                used = (ours["used"] - ours["base"]) / (theirs["used"] - theirs["base"])
                print(
                    f"{label:16}{'ours/theirs':14}{ours['seconds'] / theirs['seconds']:9.2f}"
                    f"{'':12}{memory:14.2f}{'':21}{used:17.2f}"
                )


if __name__ == "__main__":
    main()
