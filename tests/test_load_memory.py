"""Peak memory of loading SmolLM2-135M: at most 1.3x the bytes of the float32 weights it ends with.

Each load runs in a fresh process that reads its own peak resident memory (VmHWM) and subtracts
what the process held just before loading (Python, JAX's runtime), as bench/load.py does. A
float32 load peaks at about 1.1x; holding the largest tensor (the 113 MB embedding) twice over,
or the GGUF file's memory map (~100 MB) beside the model, goes past 1.3x. A bfloat16 load peaks
at about 1.25x: the fixed ~45 MB (tokenizer, Keras objects, XLA's first compilation) weigh
against half the bytes; a float32 copy of the embedding on the way would add 0.4x.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux's /proc"
    ),
]

LIMIT = {"float32": 1.3, "bfloat16": 1.5}

CHILD = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "jax"

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    import jax
    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.checkpoints.presets import load_checkpoint

    jax.numpy.zeros(1).block_until_ready()
    base = rss("VmRSS")
    checkpoint = load_checkpoint(sys.argv[1])
    backbone = Llama3Backbone.from_checkpoint(checkpoint, dtype=sys.argv[2], progress=False)
    checkpoint.close()
    weights = sum(int(w.value.nbytes) for w in backbone.weights)
    print(json.dumps({"added": rss("VmHWM") - base, "weights": weights}))
    """
)

# Float32 safetensors copies of the GGUF, written by our exporter in a process of their own.
WRITE_COPY = textwrap.dedent(
    """
    import os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    from kerasllm_widget import Llama3Backbone
    Llama3Backbone.from_preset(sys.argv[1], dtype="float32").save_to_preset(
        sys.argv[2], max_shard_size=sys.argv[3]
    )
    """
)


def load_in_fresh_process(preset: str, dtype: str) -> tuple[float, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, preset, dtype], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures["added"] / figures["weights"], figures


@pytest.fixture(scope="module")
def safetensors_copies(smollm2_gguf, tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for label, max_shard_size in (("single", "5GB"), ("sharded", "150MB")):
        folder = tmp_path_factory.mktemp(f"smollm2-{label}")
        subprocess.run(
            [sys.executable, "-c", WRITE_COPY, str(smollm2_gguf), str(folder), max_shard_size],
            check=True,
            capture_output=True,
            timeout=600,
        )
        folders[label] = folder
    assert (folders["single"] / "model.safetensors").exists()
    assert len(list(folders["sharded"].glob("model-*.safetensors"))) > 1
    return folders


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gguf_load_peak_is_within_limit(smollm2_gguf, dtype):
    ratio, figures = load_in_fresh_process(str(smollm2_gguf), dtype)
    assert ratio <= LIMIT[dtype], (
        f"peak memory added by the load is {ratio:.2f}x the weights: {figures}"
    )


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_safetensors_load_peak_is_within_limit(safetensors_copies, layout):
    ratio, figures = load_in_fresh_process(str(safetensors_copies[layout]), "float32")
    assert ratio <= LIMIT["float32"], (
        f"peak memory added by the load is {ratio:.2f}x the weights: {figures}"
    )
