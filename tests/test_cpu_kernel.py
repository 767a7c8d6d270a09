"""The CPU decode kernel (`kerasllm_widget/kernels/decode.cc`): built on first use, its products
equal numpy's for every weight type and both layouts, the engine's programs call it only for
decode-sized products, and a machine without it says why and keeps XLA's dot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from kernel_support import needs_cpu_kernel

from kerasllm_widget.kernels import cpu, products

SHAPES = [
    (576, 960),
    (100, 37),
    (1536, 576),
    (8, 3),
    (37, 45),
]  # tails: K and N not multiples of 8, odd K


def matvec(x, w, scale=None, transposed=False):
    return np.asarray(
        jax.jit(lambda a, b, s: cpu.matvec(a, b, s, transposed=transposed))(x, w, scale)
    )


@needs_cpu_kernel
def test_the_kernel_builds_here():
    assert cpu.available(), cpu.reason_unavailable()
    assert cpu.reason_unavailable() == ""


@needs_cpu_kernel
@pytest.mark.parametrize("rows", [1, 3, 9])
@pytest.mark.parametrize("weight_type", [np.float32, ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("transposed", [False, True])
def test_float_weights_match_numpy(rows, weight_type, transposed):
    rng = np.random.default_rng(rows)
    for k, n in SHAPES:
        x = rng.standard_normal((rows, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(weight_type)
        expected = x @ w.astype(np.float32)
        stored = np.ascontiguousarray(w.T) if transposed else w
        got = matvec(x, stored, transposed=transposed)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


@needs_cpu_kernel
@pytest.mark.parametrize("weight_type", [np.float32, ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("rows", [9, 13, 112])  # blocks of six rows: tails of 3 and 1
def test_prompt_sized_products_match_numpy(rows, weight_type):
    # The GEMM path: panels of 16 columns (tails: N = 37 and 3), scale per output, and
    # bfloat16 inputs and outputs.
    rng = np.random.default_rng(rows)
    for k, n in SHAPES:
        x = rng.standard_normal((rows, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(weight_type)
        scale = rng.random(n).astype(np.float32)
        expected = (x @ w.astype(np.float32)) * scale
        np.testing.assert_allclose(matvec(x, w, scale), expected, rtol=1e-4, atol=1e-3)
        low = np.asarray(jax.jit(lambda a, b: cpu.matvec(a, b))(x.astype(ml_dtypes.bfloat16), w))
        assert low.dtype == ml_dtypes.bfloat16
        exact = x.astype(ml_dtypes.bfloat16).astype(np.float32) @ w.astype(np.float32)
        np.testing.assert_allclose(low.astype(np.float32), exact, rtol=0.02, atol=0.05)


@needs_cpu_kernel
@pytest.mark.parametrize("rows", [9, 40, 112])  # 32-row tiles on AMX: tails of 9 and 8, 16
def test_bfloat16_prompts_sum_exact_products_in_float32(rows):
    # bfloat16 x bfloat16 products are exact in float32; only the order of the float32 sums
    # may differ from numpy's (on a CPU with AMX this product runs on its tiles).
    rng = np.random.default_rng(rows)
    for k, n in SHAPES:
        x = rng.standard_normal((rows, k)).astype(ml_dtypes.bfloat16)
        w = rng.standard_normal((k, n)).astype(ml_dtypes.bfloat16)
        got = np.asarray(jax.jit(lambda a, b: cpu.matvec(a, b, out_dtype=jnp.float32))(x, w))
        expected = x.astype(np.float64) @ w.astype(np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * np.sqrt(k))


@needs_cpu_kernel
def test_int8_weights_stored_in_out_are_widened_and_scaled():
    rng = np.random.default_rng(0)
    for k, n in SHAPES:
        x = rng.standard_normal((2, k)).astype(np.float32)
        q = rng.integers(-127, 128, (k, n)).astype(np.int8)
        scale = rng.random(n).astype(np.float32)
        expected = (x @ q.astype(np.float32)) * scale
        np.testing.assert_allclose(matvec(x, q, scale), expected, rtol=1e-4, atol=1e-2)


@needs_cpu_kernel
def test_int8_weights_stored_out_in_multiply_int8_inputs():
    # x is quantized per row (absolute maximum to 127), as Keras' int8 Dense does.
    rng = np.random.default_rng(1)
    for k, n in SHAPES:
        x = rng.standard_normal((3, k)).astype(np.float32)
        q = rng.integers(-128, 128, (n, k)).astype(np.int8)
        scale = rng.random(n).astype(np.float32)
        step = np.abs(x).max(axis=1, keepdims=True) / 127
        expected = (np.round(x / step) @ q.T.astype(np.float64)) * step * scale
        got = matvec(x, q, scale, transposed=True)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3 * np.abs(expected).max())
        # and within int8 rounding of the exact product
        exact = (x @ q.T.astype(np.float32)) * scale
        assert np.abs(got - exact).max() < 0.02 * np.abs(exact).max()


@needs_cpu_kernel
def test_bfloat16_inputs_give_bfloat16_outputs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 64)).astype(ml_dtypes.bfloat16)
    w = rng.standard_normal((64, 16)).astype(ml_dtypes.bfloat16)
    got = matvec(x, w)
    assert got.dtype == ml_dtypes.bfloat16
    expected = x.astype(np.float32) @ w.astype(np.float32)
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=1e-2, atol=0.05)


@needs_cpu_kernel
def test_shape_mismatch_is_refused_with_the_shapes():
    with pytest.raises(ValueError, match=r"x has 8 features but w is \(9, 4\)"):
        cpu.matvec(jnp.ones((1, 8)), jnp.ones((9, 4)))


@needs_cpu_kernel
def test_which_products_call_the_kernel():
    """A few rows: every layout and type. A prompt (more rows): float weights stored [in, out]
    (the kernel's GEMM); [out, in] and int8 weights keep XLA's dot."""
    w = jnp.asarray(np.random.default_rng(3).standard_normal((64, 32)), jnp.float32)

    def hlo(rows, weights, **options):
        x = jnp.ones((rows, 64), jnp.float32)
        program = jax.jit(lambda a, b: products.product(a, b, kernels=True, **options))
        return program.lower(x, weights).as_text()

    prompt = products.MAX_KERNEL_ROWS + 1
    for weights in (w, w.astype(jnp.bfloat16), w.astype(jnp.float16)):
        assert cpu.TARGET in hlo(1, weights)
        assert cpu.TARGET in hlo(prompt, weights)
    assert cpu.TARGET in hlo(products.MAX_KERNEL_ROWS, w.T, transposed=True)
    assert cpu.TARGET not in hlo(prompt, w.T, transposed=True)
    assert cpu.TARGET in hlo(1, w.astype(jnp.int8), scale=jnp.ones(32))
    assert cpu.TARGET not in hlo(prompt, w.astype(jnp.int8), scale=jnp.ones(32))
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 64)), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(products.product(x, w, kernels=True)),
        np.asarray(products.product(x, w, kernels=False)),
        rtol=1e-5,
        atol=1e-5,
    )


def _in_fresh_python(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# A kernel on a machine without a C++ compiler: builds a ChatWidget on a tiny model and reports
# the warnings raised and what the chat's status line says.
NO_COMPILER = r"""
import json, sys, warnings
sys.path.insert(0, TESTS)
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from kerasllm_widget import ChatWidget
    from kerasllm_widget.kernels import cpu
    from tiny_llama import tiny_causal_lm
    chat = ChatWidget(tiny_causal_lm())
    cpu.available(), cpu.available()
    chat_again = ChatWidget(tiny_causal_lm())
print(json.dumps({
    "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    "notice": chat.status["notice"], "notice_again": chat_again.status["notice"],
    "why": cpu.reason_unavailable(),
}))
""".replace("TESTS", repr(os.path.dirname(os.path.abspath(__file__))))


def test_turned_off_by_the_environment_says_so_and_nothing_more():
    report = json.loads(_in_fresh_python(NO_COMPILER, KERASLLM_CPU_KERNELS="0"))
    assert report["why"] == "turned off with KERASLLM_CPU_KERNELS=0"
    assert report["warnings"] == [] and report["notice"] == ""  # the user chose it


def test_without_a_compiler_a_warning_and_the_status_line_name_the_fix(tmp_path):
    # No compiler on PATH (an empty folder) and none named by CXX.
    report = json.loads(_in_fresh_python(NO_COMPILER, PATH=str(tmp_path), CXX=""))
    assert report["why"] == "no C++ compiler found"
    (warning,) = report["warnings"]  # once per process, however often it is asked
    assert "no C++ compiler found" in warning and "apt-get install g++" in warning
    assert report["notice"] == warning and report["notice_again"] == warning


def reference_attention(q, k, v, valid, scale):
    batch, heads, _ = q.shape
    group = heads // k.shape[2]
    out = np.zeros(q.shape, np.float64)
    for b in range(batch):
        for h in range(heads):
            if not valid[b].any():
                continue
            scores = (k[b, :, h // group].astype(np.float64) @ q[b, h]) * scale
            scores = np.where(valid[b], scores, -np.inf)
            p = np.exp(scores - scores.max())
            out[b, h] = (p / p.sum()) @ v[b, :, h // group]
    return out


@needs_cpu_kernel
@pytest.mark.parametrize(
    "batch, heads, kv_heads, slots, dim",
    [(1, 9, 3, 256, 64), (2, 4, 1, 17, 8), (3, 32, 8, 512, 64)],  # SmolLM2, MQA, Llama 3.2 1B
)
def test_one_query_attention_matches_the_softmax_over_valid_slots(
    batch, heads, kv_heads, slots, dim
):
    rng = np.random.default_rng(slots)
    q = rng.standard_normal((batch, heads, dim)).astype(np.float32)
    k = rng.standard_normal((batch, slots, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((batch, slots, kv_heads, dim)).astype(np.float32)
    valid = rng.random((batch, slots)) < 0.7
    valid[-1] = False  # a sequence with no valid slot gets zeros
    scale = 1 / np.sqrt(dim)
    expected = reference_attention(q, k, v, valid, scale)
    attend = jax.jit(lambda *a: cpu.attention(*a, scale))
    np.testing.assert_allclose(np.asarray(attend(q, k, v, valid)), expected, atol=2e-6)
    assert not np.asarray(attend(q, k, v, valid))[-1].any()
    low = [a.astype(ml_dtypes.bfloat16) for a in (q, k, v)]
    got = np.asarray(attend(*low, valid))
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(got.astype(np.float32), expected, atol=0.02)


@needs_cpu_kernel
def test_attention_over_several_chunks_of_slots_some_with_no_valid_slot():
    """The cache is read in chunks of 256 slots, each with its own softmax maximum, merged at
    the end: a sequence whose valid slots all lie in one chunk (a short prompt in a long cache,
    or only late slots) must get the same result as one softmax over all of them."""
    batch, heads, kv_heads, slots, dim = 3, 6, 2, 700, 20  # dim: vector and scalar tails
    rng = np.random.default_rng(7)
    q = rng.standard_normal((batch, heads, dim)).astype(np.float32)
    k = rng.standard_normal((batch, slots, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((batch, slots, kv_heads, dim)).astype(np.float32)
    valid = np.zeros((batch, slots), bool)
    valid[0, :10] = True  # first chunk only
    valid[1, 600:650] = True  # last chunk only
    valid[2, 250:520] = True  # across three chunks
    scale = 1 / np.sqrt(dim)
    got = np.asarray(jax.jit(lambda *a: cpu.attention(*a, scale))(q, k, v, valid))
    np.testing.assert_allclose(got, reference_attention(q, k, v, valid, scale), atol=2e-6)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.int8])
def test_take_rows_copies_the_rows_of_any_table(dtype):
    rng = np.random.default_rng(3)
    table = (rng.standard_normal((50, 12)) * 20).astype(dtype)
    ids = np.array([[0, 49, 7], [7, 3, 3]], np.int32)
    got = np.asarray(jax.jit(cpu.take_rows)(table, ids))
    assert got.dtype == table.dtype and got.shape == (2, 3, 12)
    np.testing.assert_array_equal(got, table[ids])
    # ids outside the table are clamped to it
    np.testing.assert_array_equal(
        np.asarray(cpu.take_rows(table, np.array([-1, 50]))), table[[0, 49]]
    )


@needs_cpu_kernel
def test_a_16_bit_embedding_is_gathered_without_copying_the_table():
    """XLA on a CPU widens a bfloat16 table to float32 to gather from it, and hoists a bit-cast
    of it out of a loop as a copy of the whole table: a decode loop must do neither."""
    import keras

    from kerasllm_widget.models.llama3_forward import embed as _embed

    vocabulary, width = 4096, 96
    embedding = keras.layers.Embedding(vocabulary, width, dtype="bfloat16")
    embedding.build((None,))
    table = jnp.asarray(np.random.default_rng(4).standard_normal((vocabulary, width)), "bfloat16")

    def decode_loop(table, ids):
        with keras.StatelessScope(state_mapping=[(embedding.embeddings, table)]):

            def step(i, total):
                return total + _embed(embedding, ids + i, kernels=True).astype("float32").sum()

            return jax.lax.fori_loop(0, 4, step, jnp.float32(0))

    ids = jnp.array([[5]], jnp.int32)
    hlo = jax.jit(decode_loop).lower(table, ids).compile().as_text()
    assert cpu.TAKE_ROWS_TARGET in hlo
    for copy in (f"u16[{vocabulary},{width}]", f"f32[{vocabulary},{width}]"):
        assert copy not in hlo, copy
    with keras.StatelessScope(state_mapping=[(embedding.embeddings, table)]):
        rows = _embed(embedding, ids, kernels=True)
    np.testing.assert_array_equal(np.asarray(rows), np.asarray(table)[[[5]]])


@needs_cpu_kernel
@pytest.mark.parametrize("k", [1, 5, 64, 1024])
def test_top_k_equals_lax_top_k_ties_included(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((3, 49152)).astype(np.float32)
    x[1, 100:200] = 5.0  # a hundred-way tie for the best: the lower ids first
    x[2, :] = 0.0  # all tied
    x[0, 7] = -np.inf
    values, ids = jax.jit(lambda a: cpu.top_k(a, k))(x)
    expected_values, expected_ids = jax.lax.top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(np.asarray(values), np.asarray(expected_values))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(expected_ids))
    with pytest.raises(ValueError, match="k=49153"):
        cpu.top_k(x, 49153)


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
cpu MHz\t\t: 2600.000
flags\t\t: fpu sse2 avx2 avx512f
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_the_cache_key_names_the_cpu_features_on_x86_and_aarch64():
    x86 = cpu.cpu_signature(X86_CPUINFO, "x86_64")
    assert "avx512f" in x86 and "AMD EPYC 9B14" in x86 and "2600" not in x86
    arm = cpu.cpu_signature(ARM_CPUINFO, "aarch64")
    assert "Features : fp asimd evtstrm aes sve" in arm and "0xd40" in arm
    # Another feature set, another key; only a clock-rate change keeps it.
    assert cpu.cpu_signature(ARM_CPUINFO.replace(" sve", ""), "aarch64") != arm
    assert cpu.cpu_signature(X86_CPUINFO.replace("2600", "3100"), "x86_64") == x86


def test_the_cache_key_without_feature_lines_hashes_what_is_readable():
    plain = "processor : 0\nhart : 0\nuarch : sifive,u74\n"
    signature = cpu.cpu_signature(plain, "riscv64")
    assert signature.startswith("riscv64\n")
    assert signature != cpu.cpu_signature(plain.replace("u74", "p550"), "riscv64")
    assert cpu.cpu_signature(None, "ppc64le") == "ppc64le"


@needs_cpu_kernel
def test_the_cache_key_names_the_compiler_version():
    version = cpu.compiler_version(os.environ.get("CXX") or "c++")
    assert version and any(ch.isdigit() for ch in version)
    assert cpu.compiler_version("/nonexistent/c++") == ""
