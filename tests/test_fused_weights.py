"""The engine's inference layouts (fused q/k/v and gate/up kernels, the transposed output
projection): derived from the variables, used by the compiled steps, derived again when the
weights change, and left out where a layer cannot be fused (LoRA)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from tiny_llama import tiny_causal_lm

from kerasllm_widget.generation.fused_weights import fusion_plan
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.samplers import Sampler
from kerasllm_widget.kernels import products

PROMPT = [1, 17, 45, 99, 3, 250, 7]
NEW_TOKENS = 12


def greedy_by_full_forward(model, prompt, new_tokens):
    """Greedy continuation by running the whole model (no cache, no engine) for every token."""
    ids = list(prompt)
    for _ in range(new_tokens):
        x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), bool)}
        logits = keras.ops.convert_to_numpy(model(x))
        ids.append(int(np.argmax(logits[0, -1])))
    return ids[len(prompt) :]


def greedy_by_engine(model, prompt, new_tokens):
    engine = engine_for(model)
    chunks = engine.generate_tokens([prompt], new_tokens, sampler=Sampler(temperature=0.0))
    return [int(t) for chunk in chunks for t in chunk.tokens[0]]


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm(seed=3)


def test_engine_derives_fused_kernels_from_the_variables(model):
    values, fused = engine_for(model).weights()
    assert len(values) == len(model.variables)
    attention = model.backbone.transformer_layers[1].attention
    layer = model.backbone.transformer_layers[1]
    expected_qkv = np.concatenate(
        [
            np.asarray(d.kernel)
            for d in (attention.query_dense, attention.key_dense, attention.value_dense)
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(np.asarray(fused.layers[1]["qkv"]), expected_qkv)
    expected_gate_up = np.concatenate(
        [
            np.asarray(layer.feedforward_gate_dense.kernel),
            np.asarray(layer.feedforward_intermediate_dense.kernel),
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(np.asarray(fused.layers[1]["gate_up"]), expected_gate_up)
    # On a CPU the decode kernel reads the tied [vocabulary, hidden] table in place; without it
    # the engine keeps a transposed copy (XLA would otherwise make one at every step).
    assert fused.kernels is products.enabled()
    assert fused.lm_head is None


def test_without_the_cpu_kernel_the_output_projection_is_transposed_once(monkeypatch):
    monkeypatch.setattr(products, "enabled", lambda: False)
    model = tiny_causal_lm(seed=7)
    values, fused = engine_for(model).weights()
    assert fused.kernels is False
    embeddings = np.asarray(model.backbone.token_embedding.embeddings)
    np.testing.assert_array_equal(np.asarray(fused.lm_head), embeddings.T)
    assert greedy_by_engine(model, PROMPT, NEW_TOKENS) == greedy_by_full_forward(
        model, PROMPT, NEW_TOKENS
    )


def test_greedy_decode_with_fused_kernels_equals_the_full_forward(model):
    assert greedy_by_engine(model, PROMPT, NEW_TOKENS) == greedy_by_full_forward(
        model, PROMPT, NEW_TOKENS
    )


def test_changed_weights_are_fused_again():
    model = tiny_causal_lm(seed=4)
    engine = engine_for(model)
    before = greedy_by_engine(model, PROMPT, NEW_TOKENS)
    old_fused = engine.weights()[1]
    gate = model.backbone.transformer_layers[0].feedforward_gate_dense.kernel
    gate.assign(np.asarray(gate) * -3.0)
    model.backbone.token_embedding.embeddings.assign(
        np.asarray(model.backbone.token_embedding.embeddings)[::-1]
    )
    new_fused = engine.weights()[1]
    assert new_fused is not old_fused
    np.testing.assert_array_equal(
        np.asarray(new_fused.layers[0]["gate_up"])[:, : gate.shape[1]], np.asarray(gate)
    )
    after = greedy_by_engine(model, PROMPT, NEW_TOKENS)
    assert after == greedy_by_full_forward(model, PROMPT, NEW_TOKENS)
    assert after != before


def test_lora_layers_keep_their_unfused_path():
    model = tiny_causal_lm(seed=5)
    model.backbone.enable_lora(4)  # query and value projections
    rng = np.random.default_rng(0)
    for layer in model.backbone.transformer_layers:
        for dense in (layer.attention.query_dense, layer.attention.value_dense):
            dense.lora_kernel_b.assign(rng.normal(0, 0.5, dense.lora_kernel_b.shape))
    layers, _, _ = fusion_plan(model)
    assert layers == (("gate_up",),) * len(model.backbone.transformer_layers)
    assert greedy_by_engine(model, PROMPT, NEW_TOKENS) == greedy_by_full_forward(
        model, PROMPT, NEW_TOKENS
    )


def test_the_accelerator_layout_decodes_as_the_full_forward(monkeypatch):
    # GPUs read q/k/v and the attention output as transposed kernels (a contiguous reduction at
    # one token per row); the same real plan, chosen here on a CPU, must decode identically.
    from kerasllm_widget.generation import engine as engine_module
    from kerasllm_widget.models.llama3_attention import TransposedAttentionKernels

    monkeypatch.setattr(
        engine_module, "fusion_plan", lambda model: fusion_plan(model, on_cpu=False, kernels=False)
    )
    model = tiny_causal_lm(seed=6)
    engine = engine_for(model)
    assert greedy_by_engine(model, PROMPT, NEW_TOKENS) == greedy_by_full_forward(
        model, PROMPT, NEW_TOKENS
    )
    fused = engine.weights()[1]
    attention = model.backbone.transformer_layers[0].attention
    kernels = fused.layers[0]["qkv"]
    assert isinstance(kernels, TransposedAttentionKernels)
    qkv = np.concatenate(
        [
            np.asarray(d.kernel)
            for d in (attention.query_dense, attention.key_dense, attention.value_dense)
        ],
        axis=-1,
    )
    np.testing.assert_array_equal(np.asarray(kernels.qkv), qkv.T)
    np.testing.assert_array_equal(
        np.asarray(kernels.output), np.asarray(attention.output_dense.kernel).T
    )
    assert fused.lm_head is None  # the transposed embedding is a CPU layout
