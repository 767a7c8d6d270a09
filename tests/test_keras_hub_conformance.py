"""keras_hub's own calls, run unchanged against our classes, with the results keras_hub documents.

`KERAS_HUB_CALLS` is the table: every call that the seed document (the "Llama 3.2 in Keras" blog
post), the docstrings of keras_hub's `Llama3CausalLM` / `CausalLM` / `Backbone` and the keras.io
Llama guides show, as the code a keras_hub user types (``keras_hub.models`` replaced by our
package) and the result keras_hub documents for it. The README lists the same calls.

With the optional ``keras-hub`` extra installed, `test_same_results_as_keras_hub` runs the
tokenizer, the preprocessor and greedy ``generate`` of keras_hub itself on the same checkpoint
folder and compares them with ours.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest

from kerasllm_widget import Llama3Backbone, Llama3CausalLM, Llama3Tokenizer
from kerasllm_widget.checkpoints.errors import PresetError
from kerasllm_widget.checkpoints.presets import KERAS_HUB_PRESETS, resolve_builtin
from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor
from tests.tiny_llama import tiny_causal_lm

PROMPT = "The sky is"


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    """A random Llama-3.2-shaped checkpoint (GQA, llama3 RoPE scaling, tied embeddings) with a
    byte-level BPE tokenizer, saved as a Hugging Face folder: what ``from_preset`` reads."""
    folder = tmp_path_factory.mktemp("conformance") / "tiny-llama"
    tiny_causal_lm(seed=3, sequence_length=32).save_to_preset(folder)
    return folder


@pytest.fixture(scope="module")
def model(preset):
    model = Llama3CausalLM.from_preset(str(preset))
    model.preprocessor.sequence_length = 32
    return model


def _reply_of_length(model, total: int) -> str:
    """The greedy reply that fills the prompt (start token included) up to ``total`` tokens."""
    prompt = len(np.asarray(model.preprocessor.generate_preprocess(PROMPT)["token_ids"]))
    ids = next(
        e.token_ids
        for e in model.stream(
            PROMPT, max_new_tokens=total - prompt, sampler="greedy", stop_token_ids=None
        )
        if hasattr(e, "reply")
    )
    assert len(ids) == total - prompt
    return model.tokenizer.detokenize(ids)


# (where keras_hub shows it, the call as a keras_hub user writes it, the documented result)
KERAS_HUB_CALLS = [
    (
        "seed: from_preset + generate",
        lambda m, p, t: Llama3CausalLM.from_preset(str(p)).generate("Hi there!", max_length=12),
        lambda out, m: isinstance(out, str) and out.startswith("Hi there!"),
    ),
    (
        "seed: from_preset(dtype=...)",
        lambda m, p, t: Llama3CausalLM.from_preset(str(p), dtype="float16").backbone.dtype_policy,
        lambda policy, m: policy.name == "float16",
    ),
    (
        "CausalLM.generate: max_length is the 2nd positional argument and counts the prompt",
        lambda m, p, t: m.generate(PROMPT, 12, stop_token_ids=None, sampler="greedy"),
        lambda out, m: out == PROMPT + _reply_of_length(m, 12),
    ),
    (
        "CausalLM.generate: max_length defaults to the preprocessor's sequence_length",
        lambda m, p, t: m.generate(PROMPT, stop_token_ids=None, sampler="greedy"),
        lambda out, m: out == PROMPT + _reply_of_length(m, m.preprocessor.sequence_length),
    ),
    (
        "CausalLM.generate: batched prompts",
        lambda m, p, t: m.generate([PROMPT, "A cat"], max_length=10),
        lambda out, m: isinstance(out, list) and len(out) == 2 and out[1].startswith("A cat"),
    ),
    (
        "CausalLM.generate: strip_prompt=True returns the continuation only",
        lambda m, p, t: (m.generate(PROMPT, 10, None), m.generate(PROMPT, 10, None, True)),
        lambda out, m: out[0] == PROMPT + out[1],
    ),
    (
        "CausalLM.generate: stop_token_ids=(id,) stops on that id (and only that id)",
        lambda m, p, t: _stop_on_second_token(m),
        lambda out, m: out[1].token_ids == out[0] and out[1].stop_reason == "stop_token",
    ),
    (
        "Llama3CausalLM docstring: generate without preprocessing",
        lambda m, p, t: Llama3CausalLM.from_preset(str(p), preprocessor=None).generate(
            {
                "token_ids": np.array([[1, 45, 67, 0, 0, 0, 0]] * 2),
                "padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0]] * 2),
            },
            stop_token_ids=None,
        ),
        lambda out, m: (
            out["token_ids"].shape == (2, 7)
            and out["padding_mask"].all()
            and (out["token_ids"][:, :3] == [1, 45, 67]).all()
        ),
    ),
    (
        "CausalLM.compile: the default sampler is top_k (k=5)",
        lambda m, p, t: _compiled_sampler(p),
        lambda sampler, m: sampler.top_k == 5 and not sampler.is_greedy,
    ),
    (
        "CausalLM docstring: compile(sampler='greedy') then generate",
        lambda m, p, t: _greedy_twice(p),
        lambda out, m: out[0] == out[1],
    ),
    (
        "keras_hub.samplers objects' arguments: compile(sampler=TopKSampler(k=7))",
        lambda m, p, t: _with_sampler(p, {"class_name": "TopKSampler", "config": {"k": 7}}),
        lambda sampler, m: sampler.top_k == 7,
    ),
    (
        "seed: model.fit(strings)",
        lambda m, p, t: _fitted(p, ["The sky is blue.", "Grass is green."]),
        lambda history, m: np.isfinite(history.history["loss"][-1]),
    ),
    (
        "CausalLM docstring: fit on preprocessed (x, y, sample_weight) without a preprocessor",
        lambda m, p, t: _fitted_preprocessed(p),
        lambda history, m: np.isfinite(history.history["loss"][-1]),
    ),
    (
        "seed: model.preprocessor.tokenizer and tokenizer('Hello')",
        lambda m, p, t: m.preprocessor.tokenizer("Hello"),
        lambda ids, m: ids.dtype == np.int32 and ids.ndim == 1 and len(ids) >= 1,
    ),
    (
        "seed: model.preprocessor('Hello') gives (x, y, sample_weight)",
        lambda m, p, t: m.preprocessor("Hello"),
        lambda out, m: (
            set(out[0]) == {"token_ids", "padding_mask"}
            and out[0]["token_ids"].shape == (32,)
            and (out[1][:-1] == out[0]["token_ids"][1:]).all()
        ),
    ),
    (
        "seed: model.backbone(model.preprocessor([...])[0]) gives hidden states",
        lambda m, p, t: m.backbone(m.preprocessor(["Hello", "Hi!"])[0]),
        lambda hidden, m: tuple(hidden.shape) == (2, 32, m.backbone.hidden_dim),
    ),
    (
        "seed: Llama3Backbone / Llama3Tokenizer.from_preset of the same preset",
        lambda m, p, t: (Llama3Backbone.from_preset(str(p)), Llama3Tokenizer.from_preset(str(p))),
        lambda out, m: (
            out[0].num_layers == m.backbone.num_layers
            and out[1].vocabulary_size() == m.tokenizer.vocabulary_size()
        ),
    ),
    (
        "Llama3CausalLMPreprocessor.from_preset(preset, sequence_length=...)",
        lambda m, p, t: Llama3CausalLMPreprocessor.from_preset(str(p), sequence_length=8)("Hi"),
        lambda out, m: out[0]["token_ids"].shape == (8,),
    ),
    (
        "Backbone.enable_lora(rank, target_layer_names=...) (keras_hub's names)",
        lambda m, p, t: Llama3Backbone.from_preset(str(p)).enable_lora(
            4, target_layer_names=["query_dense", "value_dense"]
        ),
        lambda names, m: len(names) == 2 * m.backbone.num_layers,
    ),
    (
        "Backbone.save_lora_weights('x.lora.h5') / load_lora_weights: one file",
        lambda m, p, t: _lora_round_trip(p, t),
        lambda out, m: out[0].is_file() and out[1],
    ),
    (
        "CausalLM.save_to_preset(dir, max_shard_size=...) in GB",
        lambda m, p, t: _shards(m, t, max_shard_size=0.00005),  # 50 KB
        lambda files, m: len(files) > 1,
    ),
    (
        "Task.from_preset of keras_hub's preset names: their Hugging Face repos",
        lambda m, p, t: {name: resolve_builtin(name) for name in KERAS_HUB_PRESETS},
        lambda repos, m: repos["llama3.2_instruct_1b"] == "hf://meta-llama/Llama-3.2-1B-Instruct",
    ),
]


def _stop_on_second_token(model):
    free = list(model.stream(PROMPT, max_new_tokens=8, sampler="greedy", stop_token_ids=None))
    ids = free[-1].token_ids
    stop = ids[1]
    events = list(model.stream(PROMPT, max_new_tokens=8, sampler="greedy", stop_token_ids=(stop,)))
    return ids[: ids.index(stop)], events[-1]


def _compiled_sampler(preset):
    fresh = Llama3CausalLM.from_preset(str(preset))
    fresh.compile()
    return fresh.sampler


def _greedy_twice(preset):
    fresh = Llama3CausalLM.from_preset(str(preset))
    fresh.compile(sampler="greedy")
    return fresh.generate(PROMPT, max_length=10), fresh.generate(PROMPT, max_length=10)


def _with_sampler(preset, sampler):
    fresh = Llama3CausalLM.from_preset(str(preset))
    fresh.compile(sampler=sampler)
    return fresh.sampler


def _fitted(preset, data):
    fresh = Llama3CausalLM.from_preset(str(preset))
    fresh.preprocessor.sequence_length = 16
    return fresh.fit(data, batch_size=2, epochs=1, verbose=0)


def _fitted_preprocessed(preset):
    fresh = Llama3CausalLM.from_preset(str(preset), preprocessor=None)
    x = {
        "token_ids": np.array([[1, 45, 67, 89, 2, 0, 0, 0]] * 2),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0, 0, 0]] * 2),
    }
    y = np.array([[45, 67, 89, 2, 0, 0, 0, 0]] * 2)
    sw = np.array([[1, 1, 1, 1, 0, 0, 0, 0]] * 2)
    return fresh.fit(x=x, y=y, sample_weight=sw, batch_size=2, verbose=0)


def _lora_round_trip(preset, tmp_path):
    trained = Llama3Backbone.from_preset(str(preset))
    trained.enable_lora(rank=4)
    for layer in trained.transformer_layers:
        dense = layer.attention.query_dense
        dense.lora_kernel_b.assign(np.full(dense.lora_kernel_b.shape, 0.5, "float32"))
    path = tmp_path / "adapter.lora.h5"
    trained.save_lora_weights(str(path))
    loaded = Llama3Backbone.from_preset(str(preset))
    loaded.load_lora_weights(str(path))
    x = {"token_ids": np.array([[1, 45, 67]]), "padding_mask": np.ones((1, 3), bool)}
    same = np.allclose(np.asarray(trained(x)), np.asarray(loaded(x)), atol=1e-6)
    return path, same


def _shards(model, tmp_path, **options):
    folder = tmp_path / "saved"
    model.save_to_preset(str(folder), **options)
    return sorted(f.name for f in folder.glob("*.safetensors"))


@pytest.mark.parametrize(
    "call, check", [c[1:] for c in KERAS_HUB_CALLS], ids=[c[0] for c in KERAS_HUB_CALLS]
)
def test_keras_hub_call_runs_unchanged(model, preset, tmp_path, call, check):
    result = call(model, preset, tmp_path)
    assert check(result, model), result


def test_the_readme_stream_loop_prints_the_reply_once(model, capsys):
    for event in model.stream(PROMPT, max_new_tokens=6, sampler="greedy"):
        print(event.text, end="")
    printed = capsys.readouterr().out
    reply = model.generate(PROMPT, max_new_tokens=6, sampler="greedy", strip_prompt=True)
    assert printed == reply
    done = list(model.stream(PROMPT, max_new_tokens=6, sampler="greedy"))[-1]
    assert done.text == "" and done.reply == reply


def test_stop_token_ids_auto_none_and_tuple(model):
    # None stops on nothing: the whole budget is used, the checkpoint's stop ids included.
    none = list(model.stream(PROMPT, max_new_tokens=30, sampler="greedy", stop_token_ids=None))
    assert none[-1].stop_reason == "max_new_tokens" and len(none[-1].token_ids) == 30
    # "auto" (the default) stops on the checkpoint's: its end token, made the first pick here.
    eos = model.tokenizer.end_token_id
    first = none[-1].token_ids[0]
    auto = list(model.stream(PROMPT, max_new_tokens=30, sampler="greedy", stop_token_ids="auto"))
    stops = {eos, *model.tokenizer.stop_token_ids}
    cut = next((i for i, t in enumerate(none[-1].token_ids) if t in stops), 30)
    assert auto[-1].token_ids == none[-1].token_ids[:cut]
    # A tuple replaces the checkpoint's stop ids.
    only = list(model.stream(PROMPT, max_new_tokens=30, sampler="greedy", stop_token_ids=(first,)))
    assert only[-1].token_ids == [] and only[-1].stop_reason == "stop_token"
    with pytest.raises(ValueError, match=r"stop_token_ids='eos'.*'auto'"):
        model.generate(PROMPT, stop_token_ids="eos")


def test_mixed_precision_follows_the_global_policy(preset):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = Llama3CausalLM.from_preset(str(preset))
    finally:
        keras.config.set_dtype_policy(previous)
    assert mixed.backbone.dtype_policy.name == "mixed_bfloat16"
    assert mixed.backbone.token_embedding.embeddings.dtype == "float32"
    assert mixed.backbone.compute_dtype == "bfloat16"
    text = mixed.generate(PROMPT, max_length=10, sampler="greedy")
    assert text.startswith(PROMPT)
    explicit = Llama3CausalLM.from_preset(str(preset), dtype="mixed_float16")
    assert explicit.backbone.compute_dtype == "float16"


def test_kaggle_presets_are_refused_with_the_hub_form():
    with pytest.raises(PresetError, match=r"kaggle.*hf://org/name.*'llama3.2_instruct_1b'"):
        Llama3CausalLM.from_preset("kaggle://keras/llama3/keras/llama3_8b_en/3")


def test_beam_search_is_refused_with_what_to_use():
    model = tiny_causal_lm(seed=0)
    with pytest.raises(ValueError, match=r"beam.*top_k"):
        model.compile(sampler="beam")


# --------------------------------------------------------------------------- keras_hub itself


def _keras_hub():
    """keras_hub, when the ``keras-hub`` extra is installed (it needs TensorFlow for its
    tokenizers); the extra's install location may be appended to sys.path by
    ``KERASLLM_KERAS_HUB_PATH`` so that it never shadows this environment's packages."""
    import sys

    extra = os.environ.get("KERASLLM_KERAS_HUB_PATH")
    if extra and extra not in sys.path:
        sys.path.append(extra)
    return pytest.importorskip(
        "keras_hub",
        reason="the optional keras-hub extra is not installed (pip install .[keras-hub])",
    )


def test_same_results_as_keras_hub(model, preset):
    keras_hub = _keras_hub()
    theirs = keras_hub.models.Llama3CausalLM.from_preset(str(preset))
    theirs.preprocessor.sequence_length = 32
    texts = ["Hello", "The sky is blue.", "Keras runs on JAX!"]
    for text in texts:
        np.testing.assert_array_equal(
            np.asarray(theirs.preprocessor.tokenizer(text)), model.tokenizer(text)
        )
    x_theirs, y_theirs, w_theirs = theirs.preprocessor(texts)
    x_ours, y_ours, w_ours = model.preprocessor(texts)
    np.testing.assert_array_equal(np.asarray(x_theirs["token_ids"]), x_ours["token_ids"])
    np.testing.assert_array_equal(np.asarray(x_theirs["padding_mask"]), x_ours["padding_mask"])
    np.testing.assert_array_equal(np.asarray(y_theirs), y_ours)
    np.testing.assert_array_equal(np.asarray(w_theirs), w_ours)
    theirs.compile(sampler="greedy")
    model.compile(sampler="greedy")
    try:
        for prompt in (PROMPT, "A cat"):
            assert model.generate(prompt, max_length=16) == theirs.generate(prompt, max_length=16)
        # max_length's default (the sequence_length) and stop_token_ids=None mean the same.
        for options in ({"stop_token_ids": None}, {"max_length": 12, "stop_token_ids": None}):
            assert model.generate(PROMPT, **options) == theirs.generate(PROMPT, **options)
        # Preprocessed inputs without a preprocessor: the same arrays back.
        x = {
            "token_ids": np.array([[1, 45, 67, 0, 0, 0, 0]] * 2),
            "padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0]] * 2),
        }
        bare = keras_hub.models.Llama3CausalLM.from_preset(str(preset), preprocessor=None)
        bare.compile(sampler="greedy")
        expected = bare.generate(x, stop_token_ids=None)
        got = Llama3CausalLM.from_preset(str(preset), preprocessor=None).generate(
            x, stop_token_ids=None, sampler="greedy"
        )
        for key in ("token_ids", "padding_mask"):
            np.testing.assert_array_equal(got[key], np.asarray(expected[key]))
        # keras_hub's sampler objects, as its docstrings pass them to compile.
        model.compile(sampler=keras_hub.samplers.TopKSampler(k=7, seed=1))
        assert (model.sampler.top_k, model.sampler.seed) == (7, 1)
        model.compile(sampler=keras_hub.samplers.TopPSampler(p=0.5))
        assert model.sampler.top_p == 0.5
        with pytest.raises(ValueError, match="beam"):
            model.compile(sampler=keras_hub.samplers.BeamSampler(num_beams=2))
    finally:
        model.sampler = "greedy"
