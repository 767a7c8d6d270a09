"""The GGUF reader against transformers' own GGUF loading, and against files written here with
`gguf.GGUFWriter` (tiny llama models, RoPE-scaling tensors, other architectures, bad bytes)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer

from kerasllm_widget.checkpoints.errors import (
    CheckpointFormatError,
    PresetError,
    UnsupportedModelError,
)
from kerasllm_widget.checkpoints.gguf_checkpoint import (
    load_gguf_checkpoint,
    read_gguf_metadata,
    unpermute_rows,
)

# Varied text: leading/trailing spaces, newlines, code, digits, emoji, CJK, special tokens.
TEXTS = [
    "Hello",
    "Hello, world!",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "line one\nline two\n\nline four",
    "\n\n\nnewlines first",
    "tabs\tand\tmixed \t whitespace",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "x = [1, 22, 333, 4444, 55555]  # digits",
    "Pi is 3.14159265358979 and e is 2.71828.",
    "Emoji: 🤗🦙🚀 and ❤️ and 👨‍👩‍👧",
    "中文分词测试，日本語のテキスト、한국어 텍스트",
    "Ünïcödé àccents, naïve café, Straße",
    "I'm sure you'll see they've done it; it's John's.",
    "URL: https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2",
    "Mixed CASE and camelCaseWords and snake_case_words",
    "",
]
SMOLLM2_CHAT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# --- Writing GGUF files the way llama.cpp's converter does ----------------------------------------


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute`: halves -> interleaved rotary pairs."""
    return (
        weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama_cpp_rope_freqs(factor, low_freq_factor, high_freq_factor, old_context_len, base, dim):
    """convert_hf_to_gguf.py's llama3 `rope_freqs.weight`, element by element."""
    freqs = 1.0 / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_freq_wavelen:
            factors.append(1)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor
            )
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


TINY = {
    "hidden": 64,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 16,
    "layers": 2,
    "ffn": 64,
    "vocab": 96,
}

# HF name -> GGUF name, written out independently of the reader's table.
TINY_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
TINY_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def tiny_hf_weights(seed: int = 0, tied: bool = False, bias: bool = True) -> dict[str, np.ndarray]:
    """Random weights in Hugging Face names and layouts for the TINY llama."""
    rng = np.random.default_rng(seed)
    h, d, ffn = TINY["hidden"], TINY["head_dim"], TINY["ffn"]
    q, kv = TINY["heads"] * d, TINY["kv_heads"] * d
    shapes = {"model.embed_tokens.weight": (TINY["vocab"], h), "model.norm.weight": (h,)}
    if not tied:
        shapes["lm_head.weight"] = (TINY["vocab"], h)
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (ffn, h),
            p + "mlp.up_proj.weight": (ffn, h),
            p + "mlp.down_proj.weight": (h, ffn),
        }
        if bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q,),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.bias": (kv,),
            }
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def gguf_name(hf_name: str) -> str:
    if hf_name in TINY_GLOBAL:
        return TINY_GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{TINY_LAYER[rest]}"


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    hf_weights: dict[str, np.ndarray] | None = None,
    qtypes: dict[str, gguf.GGMLQuantizationType] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    head_dim: int = TINY["head_dim"],
    rope_theta: float = 500000.0,
    kv: dict | None = None,
) -> Path:
    """A GGUF as llama.cpp writes it: hyperparameters as metadata, q/k rows permuted."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(TINY["layers"])
    writer.add_context_length(131072)
    writer.add_embedding_length(TINY["hidden"])
    writer.add_feed_forward_length(TINY["ffn"])
    writer.add_head_count(TINY["heads"])
    writer.add_head_count_kv(TINY["kv_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(TINY["vocab"])
    for key, value in (kv or {}).items():
        add = {
            bool: writer.add_bool,
            int: writer.add_uint32,
            float: writer.add_float32,
            str: writer.add_string,
        }
        add[type(value)](key, value)
    for hf_name, weight in (hf_weights or {}).items():
        if ".q_proj." in hf_name:
            weight = llama_cpp_permute(weight, TINY["heads"])
        elif ".k_proj." in hf_name:
            weight = llama_cpp_permute(weight, TINY["kv_heads"])
        qtype = (qtypes or {}).get(hf_name, gguf.GGMLQuantizationType.F32)
        if qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name(hf_name), weight.astype(np.float16))
        elif qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name(hf_name), weight)
        else:
            writer.add_tensor(
                gguf_name(hf_name), gguf.quants.quantize(weight, qtype), raw_dtype=qtype
            )
    for name, tensor in (extra_tensors or {}).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- SmolLM2 against transformers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    checkpoint = load_gguf_checkpoint(smollm2_gguf)
    yield checkpoint
    checkpoint.close()


@pytest.fixture(scope="module")
def reference(smollm2_reference):
    """transformers' model and tokenizer, loaded from the same GGUF (shared by the whole run)."""
    return smollm2_reference


@pytest.mark.reference
def test_config_matches_transformers(smollm2, reference):
    hf = reference[0].config
    ours = smollm2.config
    for key in (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias", "bos_token_id",
        "eos_token_id",
    ):  # fmt: skip
        assert ours[key] == getattr(hf, key), key
    # transformers keeps the float32 value (9.99999974e-06); we give the decimal it came from.
    assert ours["rms_norm_eps"] == pytest.approx(hf.rms_norm_eps, rel=1e-6)
    assert ours["rms_norm_eps"] == 1e-5
    # Newer transformers nest rope_theta and the scaling in `rope_parameters`.
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    assert ours["rope_theta"] == rope.get("rope_theta", getattr(hf, "rope_theta", None)) == 100000.0
    assert ours["rope_scaling"] is None and rope.get("rope_type", "default") == "default"


@pytest.mark.reference
def test_every_tensor_matches_transformers(smollm2, reference):
    state = reference[0].state_dict()
    assert smollm2.config["tie_word_embeddings"] is True
    # transformers lists the tied lm_head.weight; the file (and so we) store it once.
    assert "lm_head.weight" not in smollm2.tensor_infos
    assert set(smollm2.tensor_infos) | {"lm_head.weight"} == set(state)
    worst = {}
    for name, array in smollm2.tensors():
        expected = state[name].detach().numpy()
        assert array.dtype == np.float32 and array.shape == expected.shape, name
        assert array.shape == smollm2.tensor_infos[name].shape, name
        worst[name] = float(np.abs(array - expected).max())
    assert max(worst.values()) <= 1e-6, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    # The q/k tensors went through the row unpermute (and would not match without it).
    q = "model.layers.0.self_attn.q_proj.weight"
    assert worst[q] <= 1e-6
    assert not np.allclose(llama_cpp_permute(smollm2.read_tensor(q), 9), state[q].numpy())


def test_tensor_infos_name_gguf_types(smollm2):
    infos = smollm2.tensor_infos
    assert len(infos) == 272  # 30 layers x 9 + embedding + final norm; no lm_head, no rope_freqs
    assert infos["model.embed_tokens.weight"].dtype == "Q8_0"
    assert infos["model.embed_tokens.weight"].shape == (49152, 576)
    assert infos["model.layers.3.self_attn.k_proj.weight"].dtype == "Q4_1"
    assert infos["model.layers.3.self_attn.k_proj.weight"].shape == (192, 576)
    assert infos["model.layers.3.mlp.down_proj.weight"].shape == (576, 1536)
    assert infos["model.norm.weight"].dtype == "F32"


@pytest.mark.reference
def test_tokenizer_matches_transformers(smollm2, reference):
    hf = reference[1]
    ours = Tokenizer.from_str(smollm2.tokenizer_json)
    for text in [*TEXTS, SMOLLM2_CHAT, "a  1 b   22", "<|endoftext|>after the end<|endoftext|>"]:
        ids = ours.encode(text).ids
        assert ids == hf(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    chat = ours.encode(SMOLLM2_CHAT).ids
    assert chat[0] == 1 and chat.count(1) == 2 and chat.count(2) == 1  # kept whole, no BOS added


@pytest.mark.reference
def test_tokenizer_config_matches_transformers(smollm2, reference):
    hf = reference[1]
    config = smollm2.tokenizer_config
    assert config["chat_template"] == hf.chat_template
    assert config["chat_template"].startswith("{% for message in messages %}")
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        hf.bos_token,
        hf.eos_token,
        hf.pad_token,
    )
    assert config["add_bos_token"] is False and config["add_eos_token"] is False


def test_generation_config(smollm2):
    assert smollm2.generation_config == {"bos_token_id": 1, "eos_token_id": [2]}
    assert smollm2.tokenizer_config["eos_token"] == "<|im_end|>"


def test_closed_checkpoint_refuses_reads(smollm2_gguf):
    checkpoint = load_gguf_checkpoint(smollm2_gguf, name="smollm2-135m-instruct")
    assert checkpoint.name == "smollm2-135m-instruct"
    assert checkpoint.source == str(smollm2_gguf)
    norm = checkpoint.read_tensor("model.norm.weight")
    checkpoint.close()
    assert norm.shape == (576,) and np.isfinite(norm).all()  # still valid: it is a copy
    with pytest.raises(PresetError, match="closed"):
        checkpoint.read_tensor("model.norm.weight")


# --- Bad files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", ["header", "metadata", "tensor_infos", "half", "all_but_one"])
def test_truncated_file_is_a_clear_error(smollm2_gguf, tmp_path, keep):
    size = smollm2_gguf.stat().st_size
    cut = {"header": 10, "metadata": 1000, "tensor_infos": 1_775_000, "half": size // 2,
           "all_but_one": size - 1}[keep]  # fmt: skip
    short = tmp_path / "SmolLM2-truncated.gguf"
    with open(smollm2_gguf, "rb") as source:
        short.write_bytes(source.read(cut))
    with pytest.raises(CheckpointFormatError, match="SmolLM2-truncated.gguf") as caught:
        load_gguf_checkpoint(short)
    message = str(caught.value)
    assert "truncated or corrupt" in message and "Re-download" in message


@pytest.mark.parametrize(
    "content",
    [b"", os.urandom(4096), b"GGUF" + os.urandom(4096), b"GGUF\x03\x00\x00\x00" + os.urandom(4096)],
)
def test_garbage_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match="garbage.gguf.*truncated or corrupt"):
        load_gguf_checkpoint(path)


def test_missing_file_is_a_preset_error(tmp_path):
    with pytest.raises(PresetError, match="not found") as caught:
        load_gguf_checkpoint(tmp_path / "nowhere.gguf")
    assert not isinstance(caught.value, CheckpointFormatError)
    assert "nowhere.gguf" in str(caught.value)


def test_other_architectures_are_unsupported(tmp_path):
    path = write_gguf(
        tmp_path / "gpt2.gguf",
        arch="gpt2",
        extra_tensors={"token_embd.weight": np.zeros((8, 4), np.float32)},
    )
    with pytest.raises(UnsupportedModelError, match="gpt2.gguf.*'gpt2'.*Supported: 'llama'"):
        load_gguf_checkpoint(path)


def test_mixture_of_experts_llama_is_unsupported(tmp_path):
    path = write_gguf(tmp_path / "moe.gguf", kv={"llama.expert_count": 8})
    with pytest.raises(UnsupportedModelError, match="mixture of experts"):
        load_gguf_checkpoint(path)


def test_corrupt_tensor_values_are_named(tmp_path):
    weights = tiny_hf_weights(tied=True, bias=False)
    weights["model.norm.weight"][3] = np.nan
    checkpoint = load_gguf_checkpoint(write_gguf(tmp_path / "nan.gguf", hf_weights=weights))
    with pytest.raises(CheckpointFormatError, match="nan.gguf.*output_norm.weight.*NaN"):
        checkpoint.read_tensor("model.norm.weight")
    checkpoint.close()


# --- Tiny llama files written here -------------------------------------------------------------------


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(1)
    for heads, rows in ((9, 576), (3, 192), (4, 64)):
        weight = rng.standard_normal((rows, 5)).astype(np.float32)
        assert np.array_equal(unpermute_rows(llama_cpp_permute(weight, heads), heads), weight)
        bias = rng.standard_normal(rows).astype(np.float32)
        assert np.array_equal(unpermute_rows(llama_cpp_permute(bias, heads), heads), bias)


def test_tiny_llama_tensors_round_trip(tmp_path):
    weights = tiny_hf_weights(tied=False, bias=True)
    q8 = gguf.GGMLQuantizationType.Q8_0
    qtypes = {
        "model.layers.0.self_attn.q_proj.weight": gguf.GGMLQuantizationType.F16,
        "model.layers.1.self_attn.k_proj.weight": q8,
        "model.layers.0.mlp.gate_proj.weight": q8,
    }
    path = write_gguf(tmp_path / "tiny.gguf", hf_weights=weights, qtypes=qtypes)
    checkpoint = load_gguf_checkpoint(path)
    config = checkpoint.config
    assert config["tie_word_embeddings"] is False and config["attention_bias"] is True
    assert config["mlp_bias"] is False
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
        4,
        2,
        16,
    )
    assert set(checkpoint.tensor_infos) == set(weights)
    for name, expected in weights.items():
        qtype = qtypes.get(name)
        if qtype == gguf.GGMLQuantizationType.F16:
            expected = expected.astype(np.float16).astype(np.float32)
        elif qtype == q8:
            expected = gguf.quants.dequantize(gguf.quants.quantize(expected, q8), q8)
        array = checkpoint.read_tensor(name)
        assert array.dtype == np.float32 and array.shape == expected.shape, name
        np.testing.assert_array_equal(array, expected, err_msg=name)
    assert checkpoint.tensor_infos["model.layers.0.self_attn.q_proj.weight"].dtype == "F16"
    assert checkpoint.tensor_infos["model.layers.1.self_attn.k_proj.weight"].dtype == "Q8_0"
    assert checkpoint.tokenizer_json is None  # the file has no vocabulary
    checkpoint.close()


def test_row_ranges_match_the_whole_tensor(tmp_path):
    # Ranges that start and end inside a head of the permuted q/k rows, in quantized, F16 and F32
    # tensors: a tensor read piece by piece is the tensor read whole.
    weights = tiny_hf_weights(tied=False, bias=True)
    q8 = gguf.GGMLQuantizationType.Q8_0
    qtypes = {
        "model.layers.0.self_attn.q_proj.weight": q8,
        "model.layers.1.self_attn.k_proj.weight": gguf.GGMLQuantizationType.F16,
        "model.embed_tokens.weight": q8,
    }
    checkpoint = load_gguf_checkpoint(
        write_gguf(tmp_path / "rows.gguf", hf_weights=weights, qtypes=qtypes)
    )
    for name in weights:
        whole = checkpoint.read_tensor(name)
        rows = whole.shape[0]
        for start, stop in ((0, rows), (3, 21), (17, 18), (rows - 5, rows), (9, rows)):
            part = checkpoint.read_row_range(name, start, stop)
            np.testing.assert_array_equal(
                part, whole[start:stop], err_msg=f"{name}[{start}:{stop}]"
            )
        # 100 bytes per block: one row of 64 floats at a time, 25 values of a 1-D tensor.
        blocks = list(checkpoint.row_blocks(name, max_bytes=100))
        assert [start for start, _ in blocks] == [
            sum(len(b) for _, b in blocks[:i]) for i in range(len(blocks))
        ]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), whole, err_msg=name)
    assert (
        len(list(checkpoint.row_blocks("model.embed_tokens.weight", max_bytes=100)))
        == TINY["vocab"]
    )
    checkpoint.close()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_the_file_is_not_mapped_while_tensors_are_read(smollm2_gguf):
    # A map of the file would keep every page read resident until close(): the whole file on top
    # of the model at the peak of a load.
    checkpoint = load_gguf_checkpoint(smollm2_gguf)
    checkpoint.read_tensor("model.embed_tokens.weight")
    maps = Path("/proc/self/maps").read_text()
    checkpoint.close()
    assert str(smollm2_gguf.resolve()) not in maps


LLAMA_3_1 = {"factor": 8.0, "rope_theta": 500000.0, "head_dim": 128}
LLAMA_3_2 = {"factor": 32.0, "rope_theta": 500000.0, "head_dim": 64}


@pytest.mark.parametrize("variant", [LLAMA_3_1, LLAMA_3_2], ids=["llama-3.1", "llama-3.2"])
def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path, variant):
    freqs = llama_cpp_rope_freqs(
        variant["factor"], 1.0, 4.0, 8192, variant["rope_theta"], variant["head_dim"]
    )
    assert freqs.min() == 1.0 and freqs.max() == variant["factor"]  # all three regimes present
    assert ((freqs > 1.0) & (freqs < variant["factor"])).any()
    path = write_gguf(
        tmp_path / "llama3.gguf",
        head_dim=variant["head_dim"],
        rope_theta=variant["rope_theta"],
        extra_tensors={"rope_freqs.weight": freqs},
    )
    checkpoint = load_gguf_checkpoint(path)
    assert checkpoint.config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": variant["factor"],
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert checkpoint.config["rope_theta"] == variant["rope_theta"]
    assert checkpoint.config["max_position_embeddings"] == 131072
    assert not any("rope" in name for name in checkpoint.tensor_infos)
    checkpoint.close()


@pytest.mark.reference
def test_recovered_rope_scaling_gives_transformers_frequencies(tmp_path):
    """The recovered parameters drive transformers' llama3 RoPE to llama.cpp's frequencies."""
    import torch  # noqa: F401
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim, theta = 64, 500000.0
    freqs = llama_cpp_rope_freqs(32.0, 1.0, 4.0, 8192, theta, head_dim)
    path = write_gguf(
        tmp_path / "l32.gguf", head_dim=head_dim, extra_tensors={"rope_freqs.weight": freqs}
    )
    checkpoint = load_gguf_checkpoint(path)
    config = checkpoint.config
    hf_config = LlamaConfig(
        hidden_size=config["hidden_size"],
        num_attention_heads=config["num_attention_heads"],
        head_dim=config["head_dim"],
        max_position_embeddings=config["max_position_embeddings"],
        rope_parameters={"rope_theta": config["rope_theta"], **config["rope_scaling"]},
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    base = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    np.testing.assert_allclose(inv_freq.numpy(), base / freqs, rtol=1e-5)
    checkpoint.close()


@pytest.mark.parametrize(
    "tensor",
    [
        llama_cpp_rope_freqs(32.0, 2.0, 4.0, 8192, 500000.0, 16),  # low_freq_factor 2
        llama_cpp_rope_freqs(32.0, 1.0, 4.0, 4096, 500000.0, 16),  # original context 4096
        np.ones(3, np.float32),  # not head_dim / 2 values
    ],
    ids=["low-freq-factor", "original-context", "wrong-length"],
)
def test_nonstandard_rope_freqs_is_a_clear_error(tmp_path, tensor):
    path = write_gguf(
        tmp_path / "odd-rope.gguf", head_dim=16, extra_tensors={"rope_freqs.weight": tensor}
    )
    with pytest.raises(
        CheckpointFormatError, match="odd-rope.gguf: rope_freqs.weight does not match"
    ):
        load_gguf_checkpoint(path)


def test_metadata_parser_agrees_with_gguf_reader(tmp_path):
    path = tmp_path / "values.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -100)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -30000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 0.1)
    writer.add_uint64("t.u64", 2**63 + 5)
    writer.add_int64("t.i64", -(2**62))
    writer.add_float64("t.f64", 0.1)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo ✓")
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.5, 1.5])
    writer.add_array("t.strs", ["a", "", "ü b"])
    writer.add_tensor("output_norm.weight", np.arange(7, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours = read_gguf_metadata(path)
    reader = gguf.GGUFReader(str(path))
    keys = [key for key in reader.fields if not key.startswith("GGUF.")]
    assert set(keys) == set(ours)
    for key in keys:
        expected = reader.fields[key].contents()
        if key in ("t.f32", "t.floats"):  # float32 values: we give the shortest decimal
            assert ours[key] == pytest.approx(expected, rel=1e-7), key
        else:
            assert ours[key] == expected, key
    assert ours["t.f32"] == 0.1  # the decimal, not float32's 0.10000000149011612
    assert ours["t.u64"] == 2**63 + 5 and ours["t.strs"] == ["a", "", "ü b"]


# --- Tokenizers of other kinds ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory, llama3_tokenizer_json):
    """A tensor-light llama GGUF with the real Llama 3 vocabulary, as llama.cpp converts it."""
    data = json.loads(llama3_tokenizer_json.read_text(encoding="utf-8"))
    tokens = [""] * 128256
    token_types = [gguf.TokenType.NORMAL] * 128256
    for token, index in data["model"]["vocab"].items():
        tokens[index] = token
    for added in data["added_tokens"]:
        tokens[added["id"]] = added["content"]
        token_types[added["id"]] = gguf.TokenType.CONTROL
    path = tmp_path_factory.mktemp("llama3-gguf") / "llama3-vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(data["model"]["merges"])
    writer.add_bos_token_id(128000)
    writer.add_eos_token_id(128009)
    writer.add_eot_token_id(128009)
    writer.add_eom_token_id(128008)
    writer.add_add_bos_token(True)
    writer.add_tensor("output_norm.weight", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_llama3_vocabulary_tokenizes_like_meta_tokenizer(llama3_gguf, llama3_tokenizer_json):
    checkpoint = load_gguf_checkpoint(llama3_gguf)
    ours = Tokenizer.from_str(checkpoint.tokenizer_json)
    meta = Tokenizer.from_file(str(llama3_tokenizer_json))  # its post-processor adds nothing
    # " Александр" is one token only when whole words are looked up before merging.
    for text in [*TEXTS, " Александр", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"]:
        ids = ours.encode(text).ids
        assert ids == [128000, *meta.encode(text).ids], text  # BOS: add_bos_token is set
        assert ours.decode(ids[1:], skip_special_tokens=False) == text
    assert ours.encode("Hello").ids == [128000, 9906]
    assert ours.encode("<|eot_id|>", add_special_tokens=False).ids == [128009]
    assert checkpoint.tokenizer_config["add_bos_token"] is True
    assert checkpoint.tokenizer_config["bos_token"] == "<|begin_of_text|>"
    assert checkpoint.tokenizer_config["eos_token"] == "<|eot_id|>"
    assert checkpoint.tokenizer_config["chat_template"] is None
    assert checkpoint.generation_config == {
        "bos_token_id": 128000,
        "eos_token_id": [128009, 128008],
    }
    checkpoint.close()


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory):
    """A small sentencepiece vocabulary (as in Llama 2 and TinyLlama GGUFs): scores, no merges."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.BYTE] * 256
    words = (
        "▁ e t a o h l r d w n i s H W , ! c x f u he ▁t ▁the ll ▁w or ld ▁wor ▁world ▁H el ell "
        "ello ▁Hello in ▁in er ▁a an ▁an ▁and ▁i ▁is is ▁s st ▁fun un ▁f ex ▁ex ▁text"
    ).split()
    pieces += [*words, "<|user|>"]
    types += [gguf.TokenType.NORMAL] * len(words) + [gguf.TokenType.USER_DEFINED]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces) - 259)]
    folder = tmp_path_factory.mktemp("sentencepiece-gguf")
    writer = gguf.GGUFWriter(str(folder / "spm.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_tensor("output_norm.weight", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return folder / "spm.gguf"


@pytest.mark.reference
def test_sentencepiece_vocabulary_tokenizes_like_transformers(sentencepiece_gguf):
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(
        sentencepiece_gguf.parent, gguf_file=sentencepiece_gguf.name
    )
    checkpoint = load_gguf_checkpoint(sentencepiece_gguf)
    ours = Tokenizer.from_str(checkpoint.tokenizer_json)
    texts = [
        "Hello world", " Hello  world!", "the text is fun, and the world", "日本🤗",
        "<s>Hello</s> world", "<|user|>Hi", "", "\n\nx  ", *TEXTS,
    ]  # fmt: skip
    for text in texts:
        ids = ours.encode(text).ids
        assert ids == hf(text)["input_ids"], text
        assert ids[0] == 1  # BOS, as sentencepiece files ask
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids)
    assert ours.encode("日本", add_special_tokens=False).tokens[1:] == [  # byte fallback
        "<0xE6>", "<0x97>", "<0xA5>", "<0xE6>", "<0x9C>", "<0xAC>",
    ]  # fmt: skip
    assert checkpoint.tokenizer_config["unk_token"] == "<unk>"
    checkpoint.close()
