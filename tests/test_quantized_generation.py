"""`Llama3CausalLM.quantize("int8")` on the real SmolLM2-135M-Instruct GGUF: the task model
quantizes, the engine generates with the int8 kernels, and the greedy choices stay close to
float32's."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_support import needs_cpu_kernel

from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.samplers import Sampler

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
NEW_TOKENS = 24
# Share of positions where int8's greedy pick equals float32's, both reading float32's own
# continuation (teacher forcing, so that one early difference does not count twice).
MIN_AGREEMENT = 0.85


def greedy(model, prompt_ids):
    chunks = engine_for(model).generate_tokens(
        [prompt_ids], NEW_TOKENS, sampler=Sampler(temperature=0.0)
    )
    return [int(t) for chunk in chunks for t in chunk.tokens[0]]


def next_token_picks(model, ids):
    x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), bool)}
    return np.argmax(np.asarray(model(x), np.float32)[0], axis=-1)


@pytest.fixture(scope="module")
def runs(smollm2_gguf):
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    model = Llama3CausalLM.from_preset(str(smollm2_gguf))
    prompt = model.tokenizer.apply_chat_template(STORY)
    prompt_ids = [int(i) for i in model.preprocessor.generate_preprocess(prompt)["token_ids"]]
    float_tokens = greedy(model, prompt_ids)
    sequence = prompt_ids + float_tokens
    float_picks = next_token_picks(model, sequence)
    model.quantize("int8")
    return model, prompt_ids, float_tokens, float_picks, sequence


def test_task_model_quantizes_its_dense_kernels(runs):
    model = runs[0]
    modes = {
        layer.quantization_mode
        for block in model.backbone.transformer_layers
        for layer in (block.attention.query_dense, block.feedforward_output_dense)
    }
    assert modes == {"int8"}


def test_int8_greedy_choices_stay_close_to_float32(runs):
    model, prompt_ids, float_tokens, float_picks, sequence = runs
    int8_picks = next_token_picks(model, sequence)
    reply = slice(len(prompt_ids) - 1, len(sequence) - 1)  # positions that pick reply tokens
    agreement = float(np.mean(int8_picks[reply] == float_picks[reply]))
    assert agreement >= MIN_AGREEMENT, agreement
    # The engine streams int8 tokens (its fused layouts leave quantized kernels alone).
    int8_tokens = greedy(model, prompt_ids)
    assert int8_tokens[:4] == float_tokens[:4]


@needs_cpu_kernel
def test_decode_multiplies_the_int8_kernels_in_integers(runs):
    # Every layer's products and the (tied, float) output projection go to the CPU kernel as
    # [out, in] int8 copies; prompts keep the layers' own int8 path.
    from kerasllm_widget.generation.fused_weights import fusion_plan
    from kerasllm_widget.kernels.products import QuantizedKernel

    model = runs[0]
    layers, lm_head, kernels = fusion_plan(model)
    assert kernels and lm_head == "q8"
    assert set(layers) == {("q8",)}
    fused = engine_for(model).weights()[1]
    assert isinstance(fused.lm_head, QuantizedKernel)
    table = np.asarray(model.backbone.token_embedding.embeddings, np.float32)
    codes, step = np.asarray(fused.lm_head.kernel), np.asarray(fused.lm_head.scale)
    assert codes.dtype == np.int8 and codes.shape == table.shape
    assert np.abs(codes * step[:, None] - table).max() <= 0.51 * step.max()
