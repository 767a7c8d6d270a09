"""Generation and training speed of a Llama-3.2-1B-shaped model on one device and sharded.

Random weights (no download): the shapes are what cost time. For each layout the same model is
built, then timed on greedy generation (prefill + decode through the streaming engine) and on a
few full-parameter training steps through Keras' ``fit``; compile time is reported apart.

    python bench/distributed.py                         # every layout the devices allow
    python bench/distributed.py --tiny                  # a small model, for a CPU smoke run
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/distributed.py --tiny

Layouts: ``single`` (one device), ``model_parallel`` (mesh 1 x N: weights split over "model"),
``data_parallel`` (mesh N x 1: batch split, weights replicated), ``fsdp`` (mesh N x 1: batch
split, weights sliced over "batch" and gathered when used).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LLAMA32_1B = dict(
    vocabulary_size=128256,
    num_layers=16,
    num_query_heads=32,
    num_key_value_heads=8,
    hidden_dim=2048,
    intermediate_dim=8192,
    head_dim=64,
    rope_max_wavelength=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
    max_sequence_length=131072,
)
TINY = dict(
    LLAMA32_1B,
    vocabulary_size=512,
    num_layers=2,
    num_query_heads=4,
    num_key_value_heads=2,
    hidden_dim=64,
    intermediate_dim=128,
    head_dim=16,
)


def build(config: dict, dtype: str):
    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    return Llama3CausalLM(Llama3Backbone(**config, dtype=dtype))


def time_generation(model, prompt_length: int, new_tokens: int, batch: int) -> dict:
    import numpy as np

    from kerasllm_widget.generation.engine import RequestTimings
    from kerasllm_widget.generation.registry import engine_for

    engine = engine_for(model)
    rng = np.random.default_rng(0)
    vocab = model.backbone.vocabulary_size
    prompts = [rng.integers(0, vocab, prompt_length).tolist() for _ in range(batch)]
    results = {}
    for run in ("compile", "timed"):
        engine.clear_cache()  # no prefix reuse: the timed run prefills the whole prompt again
        timings = RequestTimings()
        started = time.perf_counter()
        produced = sum(
            out.tokens.shape[1]
            for out in engine.generate_tokens(
                prompts, max_new_tokens=new_tokens, stop_token_ids=(), timings=timings
            )
        )
        results[run] = {"seconds": time.perf_counter() - started, "tokens": produced}
    return {
        "batch": batch,
        "prompt_tokens": prompt_length,
        "new_tokens": results["timed"]["tokens"],
        "first_run_s": round(results["compile"]["seconds"], 2),
        "time_to_first_token_ms": round(timings.time_to_first_token_s * 1e3, 1),
        "decode_tokens_per_s_per_row": round(timings.decode_tokens_per_s, 1),
        "decode_tokens_per_s": round(timings.decode_tokens_per_s * batch, 1),
    }


def time_training(model, batch: int, length: int, steps: int) -> dict:
    import keras
    import numpy as np

    rng = np.random.default_rng(1)
    vocab = model.backbone.vocabulary_size
    x = {
        "token_ids": rng.integers(0, vocab, (batch * (steps + 1), length)).astype("int32"),
        "padding_mask": np.ones((batch * (steps + 1), length), bool),
    }
    labels = np.roll(x["token_ids"], -1, axis=1)
    weights = np.ones(labels.shape, "float32")

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.losses = [], []

        def on_train_batch_begin(self, batch_index, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch_index, logs=None):
            # Keras reads the loss back each step, so this waits for the step to finish.
            self.losses.append(float(logs["loss"]))
            self.times.append(time.perf_counter() - self.started)

    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-5))
    callback = StepTimes()
    model.fit(
        x,
        labels,
        sample_weight=weights,
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[callback],
    )
    steady = sorted(callback.times[1:])
    median = steady[len(steady) // 2]
    return {
        "batch": batch,
        "sequence_length": length,
        "first_step_s": round(callback.times[0], 2),
        "step_ms": round(median * 1e3, 1),
        "tokens_per_s": round(batch * length / median, 0),
        "losses": [round(v, 4) for v in callback.losses],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU smoke run)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layouts", default="single,model_parallel,data_parallel,fsdp")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-length", type=int, default=1024)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import jax
    import keras

    from kerasllm_widget.distribution import describe_sharding
    from kerasllm_widget.models.llama3_backbone import Llama3Backbone

    config = TINY if args.tiny else LLAMA32_1B
    devices = keras.distribution.list_devices()
    count = len(devices)
    print(
        f"{count} x {jax.devices()[0].device_kind}, jax {jax.__version__}, keras "
        f"{keras.__version__}, dtype {args.dtype}",
        flush=True,
    )
    results = {"devices": count, "device_kind": jax.devices()[0].device_kind, "layouts": {}}
    for layout in args.layouts.split(","):
        if layout != "single" and count < 2:
            continue
        if layout == "single":
            distribution = None
        else:
            shape = (1, count) if layout == "model_parallel" else (count, 1)
            mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)
            layout_map = Llama3Backbone.get_layout_map(
                mesh, shard_weights_over_batch=layout == "fsdp"
            )
            distribution = keras.distribution.ModelParallel(
                layout_map=layout_map, batch_dim_name="batch"
            )
        keras.utils.set_random_seed(0)
        started = time.perf_counter()
        if distribution is None:
            model = build(config, args.dtype)
        else:
            with distribution.scope():
                model = build(config, args.dtype)
        built = time.perf_counter() - started
        shard = describe_sharding(model.backbone)
        itemsize = 4 if args.dtype == "float32" else 2
        per_device = sum(itemsize * math.prod(v["shard_shape"]) for v in shard.values())
        row = {
            "build_s": round(built, 1),
            "parameters": int(model.backbone.count_params()),
            "weight_bytes_per_device": per_device,
        }
        scope = distribution.scope() if distribution is not None else _null()
        measurements = [
            ("generate_batch1", time_generation, (args.prompt, args.new_tokens, 1)),
            ("generate_batch8", time_generation, (args.prompt, args.new_tokens, 8)),
            ("train", time_training, (args.train_batch, args.train_length, args.train_steps)),
        ]
        with scope:
            for name, measure, measure_args in measurements:
                try:
                    row[name] = measure(model, *measure_args)
                except Exception as error:  # report it and go on with the other measurements
                    row[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        results["layouts"][layout] = row
        print(layout, json.dumps(row), flush=True)
        del model
        if args.json:  # after each layout, so a run cut short still leaves its figures
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2)
    summary(results)


def summary(results: dict) -> None:
    """One line per layout: its figures beside the single device's, and the ratio."""
    layouts = results["layouts"]
    single = layouts.get("single", {})
    rows = [
        ("generate_batch1", "decode_tokens_per_s", "decode tok/s, batch 1", True),
        ("generate_batch8", "decode_tokens_per_s", "decode tok/s, batch 8", True),
        ("generate_batch8", "time_to_first_token_ms", "first token ms, batch 8", False),
        ("train", "step_ms", "train step ms", False),
        ("train", "tokens_per_s", "train tok/s", True),
    ]
    print(
        f"\n{'':26}{'single':>12}" + "".join(f"{name:>24}" for name in layouts if name != "single")
    )
    for measure, key, label, higher_is_better in rows:
        base = single.get(measure, {}).get(key)
        cells = []
        for name, row in layouts.items():
            if name == "single":
                continue
            value = row.get(measure, {}).get(key)
            if value is None:
                cells.append(f"{'failed' if 'error' in row.get(measure, {}) else '-':>24}")
                continue
            ratio = (
                ""
                if not base
                else f" ({(value / base if higher_is_better else base / value):.2f}x)"
            )
            cells.append(f"{str(value) + ratio:>24}")
        print(f"{label:26}{str(base if base is not None else '-'):>12}" + "".join(cells))
    print(f"ratios: speed-up over one device ({results['devices']} devices in the sharded layouts)")


def _null():
    import contextlib

    return contextlib.nullcontext()


if __name__ == "__main__":
    main()
