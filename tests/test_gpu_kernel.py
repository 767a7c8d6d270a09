"""The GPU decode kernels (`kerasllm_widget/kernels/gpu.py`) against numpy and the plain path.

CI has no GPU: here the kernels run in Pallas' interpreter on the CPU, which checks their
arithmetic (blocking, the gate/up halves, padding of several rows to 16) and the engine's
wiring; `bench/gpu_kernels.py` checks them compiled on a GPU."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from tiny_llama import tiny_causal_lm

from kerasllm_widget.generation.fused_weights import fusion_plan
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.samplers import Sampler
from kerasllm_widget.kernels import gpu, products
from kerasllm_widget.kernels.products import StreamedKernel

PROMPT = [1, 17, 45, 99, 3, 250, 7]
NEW_TOKENS = 8


def bf16(array):
    return np.asarray(array, np.float32).astype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_matvec_matches_numpy(rows):
    rng = np.random.default_rng(rows)
    x, w = bf16(rng.standard_normal((rows, 512))), bf16(rng.standard_normal((96, 512)))
    expected = x.astype(np.float32) @ w.astype(np.float32).T
    got = np.asarray(gpu.matvec(x, w, out_dtype=jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    assert gpu.matvec(x, w).dtype == jnp.bfloat16


@pytest.mark.parametrize("rows", [1, 5])
def test_gate_up_silu_matches_numpy(rows):
    rng = np.random.default_rng(10 + rows)
    x, w = bf16(rng.standard_normal((rows, 128))), bf16(rng.standard_normal((2 * 64, 128)))
    both = x.astype(np.float32) @ w.astype(np.float32).T
    gate, up = both[:, :64], both[:, 64:]
    expected = gate / (1 + np.exp(-gate)) * up
    got = np.asarray(gpu.gate_up_silu(x, w), np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


def test_bad_shapes_are_refused_with_the_shapes():
    with pytest.raises(ValueError, match=r"x has 64 features but the weight is \(32, 48\)"):
        gpu.matvec(jnp.ones((1, 64)), jnp.ones((32, 48)))
    with pytest.raises(ValueError, match="x has 40 rows; the kernel takes 1 to 16"):
        gpu.matvec(jnp.ones((40, 64)), jnp.ones((32, 64)))
    assert gpu.tiling(1, 30, 64) is None and not gpu.takes(1, 30, 64)


def test_only_decode_sized_products_of_streamed_weights_take_the_kernel():
    w = StreamedKernel(jnp.ones((32, 64), jnp.bfloat16))

    def calls_kernel(rows):
        jaxpr = jax.make_jaxpr(lambda x: products.product(x, w))(jnp.ones((rows, 64), jnp.bfloat16))
        return "pallas_call" in str(jaxpr)

    assert calls_kernel(1) and calls_kernel(8)
    assert not calls_kernel(100)  # a prompt: XLA's dot on the same [out, in] array
    assert not gpu.available() or jax.default_backend() == "gpu"


def test_the_streamed_layout_decodes_as_the_plain_one(monkeypatch):
    # The layout a CUDA GPU gets, chosen here on a CPU with the kernels interpreted: the same
    # greedy tokens as the plain accelerator layout, and logits within bfloat16 rounding.
    from kerasllm_widget.generation import engine as engine_module

    def greedy(gpu_kernels):
        monkeypatch.setattr(
            engine_module,
            "fusion_plan",
            lambda model: fusion_plan(model, on_cpu=False, kernels=False, gpu_kernels=gpu_kernels),
        )
        model = tiny_causal_lm(seed=7)
        engine = engine_for(model)
        chunks = list(
            engine.generate_tokens([PROMPT], NEW_TOKENS, sampler=Sampler(temperature=0.0))
        )
        tokens = [int(t) for chunk in chunks for t in chunk.tokens[0]]
        logprobs = np.concatenate([chunk.logprobs[0] for chunk in chunks])
        return tokens, logprobs, engine.weights()[1]

    plain_tokens, plain_logprobs, _ = greedy(False)
    tokens, logprobs, fused = greedy(True)
    assert tokens == plain_tokens
    np.testing.assert_allclose(logprobs, plain_logprobs, atol=2e-2)
    layer = fused.layers[0]
    assert isinstance(layer["qkv"].qkv, StreamedKernel)
    assert isinstance(layer["gate_up"], StreamedKernel) and isinstance(
        layer["down"], StreamedKernel
    )
    assert fused.streamed_lm_head and fused.lm_head is None


@pytest.mark.parametrize("rows", [1, 8])
def test_the_kernels_lower_to_triton_for_cuda(rows):
    # No GPU here: lowering for CUDA still runs Pallas' Triton lowering of both kernels at the
    # Llama-3.2-1B decode shapes (the down product's long reduction, the fused gate/up halves).
    from jax import export

    def lowered(fn, n, k):
        x = jax.ShapeDtypeStruct((rows, k), jnp.bfloat16)
        w = jax.ShapeDtypeStruct((n, k), jnp.bfloat16)
        exported = export.export(
            jax.jit(partial(fn, interpret=False)),
            platforms=["cuda"],
            disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
        )(x, w)
        return exported.mlir_module()

    assert "xla.gpu.triton" in lowered(gpu.matvec, 2048, 8192)
    assert "xla.gpu.triton" in lowered(gpu.gate_up_silu, 16384, 2048)
