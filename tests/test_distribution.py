"""keras.distribution on 8 host devices: ModelParallel on 2x4 and 1x8 meshes, and DataParallel.

The checks run in one subprocess (this file, run as a script) because XLA's device count is fixed
when JAX starts. The subprocess builds a tiny model on one device, saves it, then loads it under
each distribution and compares logits, greedy generations, streamed tokens and a few training
steps with the single-device run; it also reports how every weight is sharded.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
PROMPTS = ["The sky is"]
# A batch of 8 splits over the 8-way batch axis of the FSDP-style mesh.
BATCH_PROMPTS = [
    "The sky is",
    "A cat",
    "Keras runs on",
    "Llama models",
    "Fine-tuning",
    "What is the capital",
    "Arrr",
    "Hello",
]
MESHES = {"model_parallel_2x4": (2, 4), "model_parallel_1x8": (1, 8)}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("distribution")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]),
    }
    result = subprocess.run(
        [sys.executable, __file__, str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((workdir / "report.json").read_text())


@pytest.mark.parametrize("case", [*MESHES, "data_parallel_8"])
def test_same_logits_and_generations_as_one_device(report, case):
    assert report["devices"] == 8
    got = report[case]
    assert got["max_logit_difference"] < 1e-4
    assert got["generated"] == report["single_device"]["generated"]
    assert got["streamed_ids"] == report["single_device"]["streamed_ids"]
    assert len(got["streamed_ids"]) >= 1


@pytest.mark.parametrize("case", ["model_parallel_2x4", "data_parallel_8"])
def test_training_steps_match_one_device(report, case):
    # One batch per epoch: three losses, each after one more update of the same weights.
    reference = report["single_device"]["losses"]
    assert len(reference) == 3 and reference[2] < reference[1] < reference[0]
    assert report[case]["losses"] == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("case", list(MESHES))
def test_every_projection_and_embedding_is_sharded(report, case):
    batch, model = MESHES[case]
    shardings = report[case]["shardings"]
    for path, info in shardings.items():
        if path.endswith("/scale"):  # norm scales are replicated
            assert info["shard_shape"] == info["shape"], path
            continue
        # Split over "model", replicated over "batch" (which carries the data parallelism).
        assert math.prod(info["shard_shape"]) * model == math.prod(info["shape"]), (path, info)
    query = shardings["transformer_layer_0/attention/query/kernel"]
    assert query["spec"] == [None, "model"] and query["shard_shape"] == [64, 64 // model]
    value = shardings["transformer_layer_1/attention/value/kernel"]
    assert value["shard_shape"] == [64, 16 // model]
    embeddings = shardings["token_embedding/embeddings"]
    assert embeddings["spec"] == ["model", None] and embeddings["shard_shape"] == [384 // model, 64]
    down = shardings["transformer_layer_1/ffn_down/kernel"]
    assert down["spec"] == ["model", None] and down["shard_shape"] == [128 // model, 64]
    assert report[case]["loaded_on_shards"]


def test_fsdp_layout_map_slices_weights_over_both_axes():
    import keras

    from kerasllm_widget.models.llama3_backbone import Llama3Backbone

    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), np.arange(8).reshape(2, 4))
    default = Llama3Backbone.get_layout_map(mesh)
    fsdp = Llama3Backbone.get_layout_map(mesh, shard_weights_over_batch=True)
    path = "llama3_backbone/transformer_layer_3/{}/kernel"
    assert default[path.format("ffn_gate")].axes == (None, "model")
    assert fsdp[path.format("ffn_gate")].axes == ("batch", "model")
    assert fsdp[path.format("ffn_down")].axes == ("model", "batch")
    assert fsdp[path.format("attention/attention_output")].axes == ("model", "batch")
    assert fsdp["llama3_backbone/transformer_layer_0/attention/key/output"].axes == (
        "batch",
        None,
        "model",
    )
    assert default["llama3_backbone/transformer_layer_0/attention/key/output"] is None
    assert default["llama3_backbone/sequence_output_layernorm/scale"] is None  # replicated
    with pytest.raises(ValueError, match="not in the device mesh"):
        Llama3Backbone.get_layout_map(mesh, model_parallel_dim_name="tensor")


def test_fsdp_generation_lays_the_batch_out_like_the_activations(report):
    """With weights sliced over "batch" (mesh 8 x 1), generation at batch 8 gives the single
    device's tokens, and the prefill program receives its token ids, mask and cache split over
    the batch axis, as the distribution lays out data (a replicated mask beside split queries
    and keys is what cuDNN's fused attention refuses on GPUs)."""
    got = report["fsdp_8x1"]
    assert got["generated"] == report["single_device"]["generated_batch"]
    assert len(set(got["generated"])) > 1
    for name in ("token_ids", "token_valid", "positions", "cache[0][0]", "cache[1][1]", "valid"):
        assert got["prefill_inputs"][name] is not None, name
        # split 8 ways (the "batch" axis) along its first dimension, nowhere else
        assert got["prefill_inputs"][name][0] == 8, (name, got["prefill_inputs"])
        assert set(got["prefill_inputs"][name][1:]) <= {1}, (name, got["prefill_inputs"])


def test_data_parallel_replicates_the_weights(report):
    for path, info in report["data_parallel_8"]["shardings"].items():
        assert info["shard_shape"] == info["shape"] and info["devices"] == 8, path


# --- the subprocess -----------------------------------------------------------------------------


def _main(workdir: Path) -> None:
    import time

    import jax
    import keras
    import numpy as np
    from tiny_llama import CORPUS, tiny_causal_lm

    from kerasllm_widget.distribution import describe_sharding
    from kerasllm_widget.generation.events import DoneEvent
    from kerasllm_widget.generation.registry import engine_for
    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 320, size=(8, 24)).astype("int32")
    features = {"token_ids": token_ids, "padding_mask": np.ones(token_ids.shape, bool)}
    preset = workdir / "preset"
    tiny_causal_lm(seed=11).save_to_preset(preset)

    class BatchLosses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    def run(model, train: bool) -> dict:
        started = time.perf_counter()
        # predict: one compiled program (eager ops on sharded arrays would compile one per op).
        out = {"logits": model.predict(features, batch_size=8, verbose=0).astype(np.float64)}
        out["generated"] = model.generate(PROMPTS[0], max_new_tokens=8, sampler="greedy")
        # Without the kept cache the stream prefills the same prompt again with the same program
        # (reusing the prefix would compile a continuation program, which other tests cover).
        engine_for(model).clear_cache()
        events = list(model.stream(PROMPTS[0], max_new_tokens=8, sampler="greedy"))
        out["streamed_ids"] = list(next(e for e in events if isinstance(e, DoneEvent)).token_ids)
        inferred = time.perf_counter()
        if train:
            losses = BatchLosses()
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
            model.fit(CORPUS, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[losses])
            out["losses"] = losses.losses
        print(
            f"inference {inferred - started:.1f}s, training {time.perf_counter() - inferred:.1f}s",
            file=sys.stderr,
        )
        return out

    report = {"devices": len(jax.devices())}
    single = run(Llama3CausalLM.from_preset(str(preset)), train=True)
    reference_logits = single.pop("logits")
    report["single_device"] = single

    devices = keras.distribution.list_devices()
    cases = {
        name: keras.distribution.ModelParallel(
            layout_map=Llama3Backbone.get_layout_map(
                keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)
            ),
            batch_dim_name="batch",
        )
        for name, shape in MESHES.items()
    }
    cases["data_parallel_8"] = keras.distribution.DataParallel(devices=devices)
    for name, distribution in cases.items():
        with distribution.scope():
            model = Llama3CausalLM.from_preset(str(preset))
            # Keyed without the model's own name (llama3_backbone, llama3_backbone_1, ...).
            shardings = {
                path.split("/", 1)[1]: info
                for path, info in describe_sharding(model.backbone).items()
            }
            loaded_on_shards = all(
                len(w.value.addressable_shards) == 8
                and all(
                    s.data.shape == tuple(shardings[w.path.split("/", 1)[1]]["shard_shape"])
                    for s in w.value.addressable_shards
                )
                for w in model.backbone.weights
            )
            result = run(model, train=name != "model_parallel_1x8")
        result["max_logit_difference"] = float(
            np.abs(result.pop("logits") - reference_logits).max()
        )
        result["shardings"] = shardings
        result["loaded_on_shards"] = loaded_on_shards
        report[name] = result

    # FSDP-style layout, generation at batch 8, with the lowered programs written out to read
    # how the prefill's inputs arrive.
    report["single_device"]["generated_batch"] = Llama3CausalLM.from_preset(str(preset)).generate(
        BATCH_PROMPTS, max_new_tokens=6, sampler="greedy"
    )
    fsdp = keras.distribution.ModelParallel(
        layout_map=Llama3Backbone.get_layout_map(
            keras.distribution.DeviceMesh((8, 1), ("batch", "model"), devices),
            shard_weights_over_batch=True,
        ),
        batch_dim_name="batch",
    )
    ir_folder = workdir / "ir"
    jax.config.update("jax_dump_ir_to", str(ir_folder))
    try:
        with fsdp.scope():
            model = Llama3CausalLM.from_preset(str(preset))
            generated = model.generate(BATCH_PROMPTS, max_new_tokens=6, sampler="greedy")
    finally:
        jax.config.update("jax_dump_ir_to", "")
    report["fsdp_8x1"] = {
        "generated": generated,
        "prefill_inputs": _argument_shardings(ir_folder, "prefill"),
    }
    (workdir / "report.json").write_text(json.dumps(report, default=list))


def _argument_shardings(folder: Path, program: str) -> dict[str, list[int] | None]:
    """How many ways each named argument of the lowered ``program`` is split along each of its
    dimensions (e.g. ``[8, 1]``), read from the StableHLO JAX wrote to ``folder``: Shardy's
    ``sdy.sharding`` (dims named by mesh axis; JAX 0.7 on) or GSPMD's ``mhlo.sharding`` (tile
    counts; JAX 0.6). None: unspecified."""
    import re

    sizes = {"batch": 8, "model": 1}  # the mesh the FSDP run lays the model out on

    def splits(argument: str) -> list[int] | None:
        shardy = re.search(r"sdy\.sharding<@\w+, (\[.*?\])>", argument)
        if shardy:
            return [
                math.prod(sizes[axis] for axis in re.findall(r'"(\w+)"', dim))
                for dim in re.findall(r"\{[^{}]*\}", shardy.group(1))
            ]
        gspmd = re.search(r'mhlo\.sharding = "\{([^"]*)\}"', argument)
        if gspmd is None:
            return None
        tiles = re.search(r"devices=\[([\d,]+)\]", gspmd.group(1))
        if tiles is None:  # {replicated}
            return [1]
        counts = [int(n) for n in tiles.group(1).split(",")]
        return counts[:-1] if "last_tile_dim_replicate" in gspmd.group(1) else counts

    found: dict[str, list[int] | None] = {}
    for path in sorted(folder.glob(f"*{program}*.mlir")):
        text = path.read_text()
        signature = re.search(r"func\.func public @main\((.*?)\) ->", text, re.S)
        if signature is None:
            continue
        # Argument names are written inline, loc("name"), or through an alias, loc(#loc3).
        aliases = dict(re.findall(r"^(#loc\d+) = loc\(\"([^\"]+)\"\)", text, re.M))
        for argument in re.split(r"%arg\d+: ", signature.group(1))[1:]:
            location = re.search(r"loc\((#loc\d+|\"[^\"]+\")\)", argument)
            if location is None:
                continue
            name = aliases.get(location.group(1), location.group(1).strip('"'))
            found[name] = splits(argument)
    return found


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
