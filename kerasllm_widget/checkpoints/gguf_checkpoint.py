"""Reading a llama.cpp GGUF file as a Hugging Face checkpoint.

A GGUF file holds what a Hugging Face folder spreads over several files: the model's hyperparameters
and its tokenizer as metadata (``llama.embedding_length``, ``tokenizer.ggml.tokens``, ...), and its
tensors under llama.cpp names, often quantized. `load_gguf_checkpoint` turns it into the same
`Checkpoint` a safetensors folder gives: a transformers ``config.json`` dict, a ``tokenizer.json``
string, and float32 tensors under Hugging Face names and layouts, dequantized one at a time.

Three things llama.cpp changes on the way in are undone here:

- the rows of ``q_proj``/``k_proj`` are permuted (llama.cpp rotates interleaved pairs, transformers
  rotates halves), so they are permuted back;
- Llama 3.1/3.2 RoPE scaling is stored as a ``rope_freqs.weight`` tensor of per-frequency divisors
  rather than as parameters, so the parameters are recovered from it;
- the tokenizer is stored as vocabulary, merges and token types, so a ``tokenizers`` pipeline is
  rebuilt from them.

The metadata is parsed here rather than with ``gguf.GGUFReader``: the reader builds a numpy view
for every string in the file, which takes about 5 s for SmolLM2's 49k-token vocabulary and 27 s for
Llama 3's 128k tokens and 280k merges, against well under a second for a plain parse. Tensors are
still dequantized with the ``gguf`` package (``gguf.quants.dequantize``).
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .checkpoint import Checkpoint, TensorInfo, path_exists, refuse_non_finite
from .errors import CheckpointFormatError, PresetError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama",)

# --- Reading the file -----------------------------------------------------------------------------

_GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS

# GGUF metadata value types (gguf.GGUFValueType) and how they are packed, little-endian.
_TYPE_STRING = 8
_TYPE_ARRAY = 9
_SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_ARRAY_DTYPES = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4",
    6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8",
}  # fmt: skip
_TYPE_FLOAT32 = 6
_TYPE_BOOL = 7


class _Truncated(Exception):
    """A read ran past the end of the file."""


class _Corrupt(Exception):
    """The bytes do not follow the GGUF format."""


class _Cursor:
    """Reads GGUF's little-endian primitives from a memory map, checking every bound."""

    _U32 = struct.Struct("<I")
    _U64 = struct.Struct("<Q")

    def __init__(self, buffer: mmap.mmap, size: int) -> None:
        self.buffer = buffer
        self.size = size
        self.pos = 0

    def _need(self, count: int) -> None:
        if count < 0 or self.pos + count > self.size:
            raise _Truncated(f"needed {count} bytes at offset {self.pos}, the file has {self.size}")

    def u32(self) -> int:
        self._need(4)
        (value,) = self._U32.unpack_from(self.buffer, self.pos)
        self.pos += 4
        return value

    def u64(self) -> int:
        self._need(8)
        (value,) = self._U64.unpack_from(self.buffer, self.pos)
        self.pos += 8
        return value

    def string(self) -> str:
        length = self.u64()
        self._need(length)
        raw = self.buffer[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _Corrupt(f"a string at offset {self.pos - length} is not UTF-8") from error

    def value(self, value_type: int) -> Any:
        if value_type == _TYPE_STRING:
            return self.string()
        if value_type == _TYPE_ARRAY:
            return self.array()
        fmt = _SCALAR_FORMATS.get(value_type)
        if fmt is None:
            raise _Corrupt(f"unknown metadata value type {value_type} at offset {self.pos - 4}")
        width = struct.calcsize(fmt)
        self._need(width)
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += width
        if value_type == _TYPE_FLOAT32:
            # float32 fields hold decimals written from config.json (1e-05, 500000.0); the shortest
            # repr of the float32 gives back that decimal instead of 9.999999747378752e-06.
            value = float(str(np.float32(value)))
        return value

    def array(self) -> list[Any]:
        item_type = self.u32()
        count = self.u64()
        if item_type == _TYPE_STRING:
            # Every string takes at least its 8-byte length: a count beyond that is garbage.
            self._need(count * 8)
            return [self.string() for _ in range(count)]
        if item_type == _TYPE_ARRAY:
            return [self.array() for _ in range(count)]
        dtype = _ARRAY_DTYPES.get(item_type)
        if dtype is None:
            raise _Corrupt(f"unknown array item type {item_type} at offset {self.pos - 12}")
        nbytes = count * np.dtype(dtype).itemsize
        self._need(nbytes)
        values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos)
        self.pos += nbytes
        if item_type == _TYPE_BOOL:
            return [bool(v) for v in values]
        return values.tolist()  # a copy: nothing may keep the map alive after close()


@dataclass(frozen=True)
class _RawTensor:
    """Where one tensor's bytes lie in the file, and how to read them."""

    name: str  # llama.cpp name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # numpy order (slowest dimension first), i.e. GGUF's dims reversed
    qtype: gguf.GGMLQuantizationType
    offset: int  # absolute, in bytes from the start of the file
    nbytes: int

    @property
    def raw_shape(self) -> tuple[int, ...]:
        """The bytes as a uint8 array whose last axis holds one row, as `dequantize` expects."""
        return (*self.shape[:-1], self.nbytes // max(1, math.prod(self.shape[:-1])))


def _parse(buffer: mmap.mmap, size: int) -> tuple[dict[str, Any], dict[str, _RawTensor]]:
    """Metadata and tensor locations of a GGUF (v2 or v3, little-endian)."""
    cursor = _Cursor(buffer, size)
    cursor._need(4)
    if buffer[0:4] != _GGUF_MAGIC:
        raise _Corrupt(f"it does not start with the GGUF magic bytes (found {buffer[0:4]!r})")
    cursor.pos = 4
    version = cursor.u32()
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in (2, 3):
            raise _Corrupt("it is a big-endian GGUF, which this reader does not handle")
        raise _Corrupt(f"GGUF version {version} is not supported (2 and 3 are)")
    tensor_count = cursor.u64()
    kv_count = cursor.u64()

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.u32())

    infos = []
    for _ in range(tensor_count):
        name = cursor.string()
        n_dims = cursor.u32()
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} claims {n_dims} dimensions")
        dims = [cursor.u64() for _ in range(n_dims)]
        type_id = cursor.u32()
        offset = cursor.u64()
        infos.append((name, dims, type_id, offset))

    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment is {alignment!r}, not a power of two")
    data_start = -(-cursor.pos // alignment) * alignment

    tensors: dict[str, _RawTensor] = {}
    for name, dims, type_id, offset in infos:
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
        except ValueError as error:
            raise _Corrupt(f"tensor {name!r} has unknown GGML type id {type_id}") from error
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if dims[0] % block_size:
            raise _Corrupt(
                f"tensor {name!r} rows of {dims[0]} do not split into {qtype.name} blocks"
            )
        nbytes = math.prod(dims) // block_size * type_size
        start = data_start + offset
        if start + nbytes > size:
            raise _Truncated(
                f"tensor {name!r} needs bytes up to {start + nbytes}, the file ends at {size}"
            )
        tensors[name] = _RawTensor(name, tuple(reversed(dims)), qtype, start, nbytes)
    return metadata, tensors


# --- Tensor names and layouts ---------------------------------------------------------------------

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
}
_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")
_ROPE_FREQS = "rope_freqs.weight"


def _hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name, or None if it is not a llama tensor."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_PATTERN.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's reordering of the rows of a q/k projection (or its bias).

    llama.cpp's converter rewrites each head's rows from "first half, second half" (the pairs that
    transformers' `rotate_half` rotates together) to interleaved pairs (what ggml's RoPE rotates).
    Pass the number of query heads for q and of key/value heads for k.

    Example:
        >>> w = np.arange(8.0).reshape(8, 1)  # one head of dim 8, as llama.cpp stores it
        >>> unpermute_rows(w, 1)[:, 0].tolist()
        [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise CheckpointFormatError(
            f"cannot split {rows} rows into {num_heads} heads of rotary pairs; the head counts in "
            "the GGUF metadata do not match the q/k tensors"
        )
    half = rows // num_heads // 2
    return (
        weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


# --- Config ----------------------------------------------------------------------------------------

# Llama 3.1/3.2's values; llama.cpp stores only the resulting divisors (see `_recover_llama3_rope`).
_LLAMA3_LOW_FREQ_FACTOR = 1.0
_LLAMA3_HIGH_FREQ_FACTOR = 4.0
_LLAMA3_ORIGINAL_CONTEXT = 8192


def llama3_rope_divisors(
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
    rope_theta: float,
    head_dim: int,
) -> np.ndarray:
    """The per-frequency divisors llama.cpp writes as ``rope_freqs.weight`` for llama3 RoPE scaling.

    One value per rotary frequency (``head_dim // 2``): 1 for high frequencies, ``factor`` for low
    ones, and a smooth blend between, as in transformers' ``_compute_llama3_parameters``.

    Example:
        >>> d = llama3_rope_divisors(32.0, 1.0, 4.0, 8192, 500000.0, 64)
        >>> float(d[0]), float(d[-1])
        (1.0, 32.0)
    """
    inv_freq = 1.0 / (
        np.float32(rope_theta)
        ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    )
    wavelen = 2 * math.pi / inv_freq.astype(np.float64)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    divisors = np.where(
        wavelen < high_freq_wavelen, 1.0, np.where(wavelen > low_freq_wavelen, factor, blended)
    )
    return divisors.astype(np.float32)


def _recover_llama3_rope(
    divisors: np.ndarray, rope_theta: float, head_dim: int, where: str
) -> dict[str, Any]:
    """The ``rope_scaling`` dict that produced a ``rope_freqs.weight`` tensor."""
    divisors = np.asarray(divisors, dtype=np.float32).reshape(-1)
    factor = float(str(np.float32(divisors.max()))) if divisors.size else float("nan")
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": _LLAMA3_LOW_FREQ_FACTOR,
        "high_freq_factor": _LLAMA3_HIGH_FREQ_FACTOR,
        "original_max_position_embeddings": _LLAMA3_ORIGINAL_CONTEXT,
    }
    if divisors.shape == (head_dim // 2,) and np.isfinite(factor) and factor >= 1.0:
        expected = llama3_rope_divisors(
            factor,
            _LLAMA3_LOW_FREQ_FACTOR,
            _LLAMA3_HIGH_FREQ_FACTOR,
            _LLAMA3_ORIGINAL_CONTEXT,
            rope_theta,
            head_dim,
        )
        if np.allclose(divisors, expected, rtol=1e-5, atol=1e-6):
            return scaling
        detail = f"the largest difference is {float(np.abs(divisors - expected).max()):.3g}"
    else:
        detail = f"it has shape {divisors.shape} and maximum {factor}, expected {head_dim // 2} values >= 1"
    raise CheckpointFormatError(
        f"{where}: rope_freqs.weight does not match Llama 3 RoPE scaling with factor {factor}, "
        f"low_freq_factor 1, high_freq_factor 4 and original_max_position_embeddings 8192 "
        f"({detail}), so its RoPE scaling cannot be recovered. Use the model's Hugging Face "
        "safetensors checkpoint instead."
    )


def _required(metadata: dict[str, Any], key: str, where: str) -> Any:
    if key not in metadata:
        raise CheckpointFormatError(
            f"{where}: the GGUF metadata has no {key!r}, which a llama model needs. The file is "
            "incomplete; re-download it or convert it again with a recent llama.cpp."
        )
    return metadata[key]


def _check_architecture(metadata: dict[str, Any], where: str) -> None:
    architecture = metadata.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{where}: GGUF architecture {architecture!r} is not supported. Supported: "
            f"{', '.join(repr(a) for a in SUPPORTED_ARCHITECTURES)} (Llama 2, 3, 3.1, 3.2, "
            "SmolLM2, TinyLlama)."
        )
    if metadata.get("llama.expert_count"):
        raise UnsupportedModelError(
            f"{where}: this llama GGUF is a mixture of experts (llama.expert_count = "
            f"{metadata['llama.expert_count']}, e.g. Mixtral), which is not supported."
        )


def _hf_config(
    metadata: dict[str, Any],
    tensors: dict[str, _RawTensor],
    read_raw: Callable[[str], np.ndarray],
    where: str,
) -> dict[str, Any]:
    """A transformers ``config.json`` dict for a llama GGUF."""
    hidden_size = _required(metadata, "llama.embedding_length", where)
    num_heads = _required(metadata, "llama.attention.head_count", where)
    num_kv_heads = metadata.get("llama.attention.head_count_kv", num_heads)
    head_dim = metadata.get(
        "llama.attention.key_length",
        metadata.get("llama.rope.dimension_count", hidden_size // num_heads),
    )
    rope_theta = metadata.get("llama.rope.freq_base", 10000.0)
    vocab_size = metadata.get("llama.vocab_size")
    if vocab_size is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        if tokens:
            vocab_size = len(tokens)
        elif "token_embd.weight" in tensors:
            vocab_size = tensors["token_embd.weight"].shape[0]
        else:
            vocab_size = _required(metadata, "llama.vocab_size", where)

    if _ROPE_FREQS in tensors:
        rope_scaling = _recover_llama3_rope(read_raw(_ROPE_FREQS), rope_theta, head_dim, where)
    else:
        rope_scaling = _rope_scaling_from_metadata(metadata, where)

    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": _required(metadata, "llama.feed_forward_length", where),
        "num_hidden_layers": _required(metadata, "llama.block_count", where),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": metadata.get("llama.attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": metadata.get("llama.context_length", 2048),
        # llama.cpp leaves output.weight out when the output layer reuses the embedding.
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
    }
    for key, field_name in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        if field_name in metadata:
            config[key] = metadata[field_name]
    return config


def _rope_scaling_from_metadata(metadata: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = metadata.get("llama.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": metadata.get("llama.rope.scaling.factor", 1.0)}
    raise UnsupportedModelError(
        f"{where}: RoPE scaling {kind!r} (llama.rope.scaling.type) is not supported; supported are "
        "none, linear, and llama3 (stored as rope_freqs.weight)."
    )


# --- Tokenizer -------------------------------------------------------------------------------------

# llama.cpp's token types (gguf.TokenType).
_CONTROL = 3
_USER_DEFINED = 4

# The pre-tokenizer regexes, by `tokenizer.ggml.pre`. This one is Llama 3's tokenizer.json's.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
}
# Files whose pre-tokenizer is GPT-2's own regex, that is, `ByteLevel(use_regex=True)`.
#
# "smollm" is here to agree with transformers, which has no entry for it. llama.cpp splits each
# digit off first; with SmolLM2's vocabulary, which holds no multi-digit tokens and no merges
# with digits, that only shows in how a run of spaces before a digit is grouped ("a  1").
_GPT2_PRE_TOKENIZERS = {"default", "gpt2", "gpt-2", "smollm"}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to the printable characters byte-level vocabularies are spelled in."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def _token_ids(metadata: dict[str, Any], tokens: list[str]) -> dict[str, int | None]:
    """The special token ids the file names, those outside the vocabulary dropped."""
    ids = {}
    for name, key in (
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
        ("eot", "tokenizer.ggml.eot_token_id"),
        ("eom", "tokenizer.ggml.eom_token_id"),
    ):
        value = metadata.get(key)
        ids[name] = value if isinstance(value, int) and 0 <= value < len(tokens) else None
    return ids


def _merges(metadata: dict[str, Any], where: str) -> list[tuple[str, str]] | None:
    raw = metadata.get("tokenizer.ggml.merges")
    if raw is None:
        return None
    merges = []
    for index, merge in enumerate(raw):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise CheckpointFormatError(
                f"{where}: tokenizer.ggml.merges[{index}] is {merge!r}, not two tokens separated by "
                "a space. The file looks corrupt; re-download it."
            )
        merges.append((parts[0], parts[1]))
    return merges


def _byte_level_bpe(metadata: dict[str, Any], where: str) -> tuple[Tokenizer, set[str]]:
    """GPT-2-style byte-level BPE (Llama 3, SmolLM2): the model and its pre-tokenizer."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    alphabet = set(_bytes_to_unicode().values())
    spelling = _bytes_to_unicode()
    # Tokens are stored in the byte alphabet ("Ġthe"); a token with other characters is stored
    # as its text, so it is spelled in the alphabet to be reachable by BPE (as transformers does).
    vocab = {
        token
        if set(token) <= alphabet
        else "".join(spelling[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(tokens)
    }
    merges = _merges(metadata, where)
    if merges is None:
        raise CheckpointFormatError(
            f"{where}: a byte-level BPE tokenizer (tokenizer.ggml.model 'gpt2') needs "
            "tokenizer.ggml.merges, which the file lacks. Re-download it or convert it again."
        )
    pre = metadata.get("tokenizer.ggml.pre", "default")
    split = _PRE_TOKENIZER_SPLITS.get(pre)
    if split is None and pre not in _GPT2_PRE_TOKENIZERS:
        warnings.warn(
            f"{where}: unknown tokenizer.ggml.pre {pre!r}; splitting text with GPT-2's regex, as "
            "transformers does. Token ids may differ from the original tokenizer's.",
            stacklevel=3,
        )
    model = models.BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        # Llama 3's tokenizer.json and llama.cpp look a whole pre-token up in the vocabulary before
        # merging; 588 of its tokens (" Александр") are unreachable by merges alone. transformers'
        # GGUF converter leaves this off and splits those words into several tokens.
        ignore_merges=split is not None,
    )
    tokenizer = Tokenizer(model)
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, alphabet


def sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges for a sentencepiece vocabulary that lists only token scores.

    Every split of a token into two tokens is a merge, ranked by the merged token's score (higher
    first), as transformers' ``generate_merges`` does when converting a sentencepiece model.

    Example:
        >>> sentencepiece_merges(["a", "b", "ab", "abb"], [0.0, 0.0, -1.0, -2.0])
        [('a', 'b'), ('ab', 'b')]
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    candidates = []
    for token, score in zip(tokens, scores, strict=True):
        local = [
            (token[:cut], token[cut:], score)
            for cut in range(1, len(token))
            if token[:cut] in vocab and token[cut:] in vocab
        ]
        local.sort(key=lambda merge: (vocab[merge[0]], vocab[merge[1]]))
        candidates.extend(local)
    candidates.sort(key=lambda merge: (merge[2], len(merge[0]), len(merge[1])), reverse=True)
    return [(left, right) for left, right, _ in candidates]


def _sentencepiece_bpe(metadata: dict[str, Any], where: str) -> tuple[Tokenizer, None]:
    """Sentencepiece BPE (Llama 2, TinyLlama): "▁" for spaces, byte fallback for unknown text."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = _merges(metadata, where)
    if merges is None:
        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise CheckpointFormatError(
                f"{where}: a sentencepiece tokenizer needs tokenizer.ggml.scores (one per token) or "
                "tokenizer.ggml.merges; the file has neither. Re-download it or convert it again."
            )
        merges = sentencepiece_merges(tokens, scores)
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=True, byte_fallback=True)
    )
    # "first": a "▁" before the text, none after special tokens, as transformers' LlamaTokenizer.
    add_prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer, None


_TOKENIZER_BUILDERS: dict[
    str, Callable[[dict[str, Any], str], tuple[Tokenizer, set[str] | None]]
] = {
    "gpt2": _byte_level_bpe,
    "llama": _sentencepiece_bpe,
}


def _default_add_bos(model: str) -> bool:
    # Files without the flag: sentencepiece vocabularies add BOS (llama.cpp and transformers agree);
    # for byte-level ones transformers adds none.
    return model == "llama"


def _tokenizer(
    metadata: dict[str, Any], where: str
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """``(tokenizer.json text, tokenizer_config dict, generation_config dict)``."""
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if model is None or model == "none" or not tokens:
        return None, {}, {}
    builder = _TOKENIZER_BUILDERS.get(model)
    if builder is None:
        raise UnsupportedModelError(
            f"{where}: tokenizer.ggml.model {model!r} is not supported; supported are "
            f"{', '.join(repr(m) for m in _TOKENIZER_BUILDERS)}."
        )
    tokenizer, alphabet = builder(metadata, where)
    ids = _token_ids(metadata, tokens)
    token_types = metadata.get("tokenizer.ggml.token_type") or []

    # Control tokens (<|im_start|>, <|eot_id|>) are matched whole in text and skipped when decoding
    # with skip_special_tokens. In a byte-level vocabulary a "control" token spelled outside the
    # byte alphabet is a llama.cpp mislabel, so it stays an ordinary token (as in transformers).
    special_ids = {
        index
        for index, (token, kind) in enumerate(zip(tokens, token_types, strict=False))
        if kind == _CONTROL and (alphabet is None or set(token) <= alphabet)
    }
    special_ids.update(ids[name] for name in ("bos", "eos", "unk", "pad") if ids[name] is not None)
    tokenizer.add_special_tokens(
        [AddedToken(tokens[index], normalized=False, special=True) for index in sorted(special_ids)]
    )
    vocab = tokenizer.get_vocab()
    user_defined = [
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, token_types, strict=False)
        if kind == _USER_DEFINED and token in vocab
    ]
    if user_defined:
        tokenizer.add_tokens(user_defined)

    def token(name: str) -> str | None:
        return tokens[ids[name]] if ids[name] is not None else None

    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", _default_add_bos(model)))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    add_bos = add_bos and token("bos") is not None
    add_eos = add_eos and token("eos") is not None
    single = [f"{token('bos')}:0"] * add_bos + ["$A:0"] + [f"{token('eos')}:0"] * add_eos
    pair = single + [f"{token('bos')}:1"] * add_bos + ["$B:1"] + [f"{token('eos')}:1"] * add_eos
    specials = [(token(name), ids[name]) for name, on in (("bos", add_bos), ("eos", add_eos)) if on]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=specials
    )

    tokenizer_config = {
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unk"),
        "pad_token": token("pad"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "chat_template": metadata.get("tokenizer.chat_template"),
    }
    stop_ids = [ids[name] for name in ("eos", "eot", "eom") if ids[name] is not None]
    generation_config = {
        "bos_token_id": ids["bos"],
        "eos_token_id": list(dict.fromkeys(stop_ids)),
    }
    return tokenizer.to_str(), tokenizer_config, generation_config


# --- The checkpoint -------------------------------------------------------------------------------


def _format_error(path: Path, detail: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"{path} is not a readable GGUF file: it looks truncated or corrupt ({detail}). "
        "Re-download it (an interrupted download leaves a short file)."
    )


def _open(path: Path) -> tuple[mmap.mmap, int]:
    """A read-only map of the file, after checking that it exists and can hold a header."""
    if not path.is_file():
        path_exists(path)  # a symlink loop is named as one, not as "not found"
        raise PresetError(
            f"GGUF file not found: {path}. Check the path, or download the file again."
        )
    size = path.stat().st_size
    if size < 24:  # magic, version and the two counts
        raise _format_error(path, f"the file is only {size} bytes long")
    with open(path, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), size


def _parse_or_raise(
    path: Path, buffer: mmap.mmap, size: int
) -> tuple[dict[str, Any], dict[str, _RawTensor]]:
    try:
        return _parse(buffer, size)
    except (_Truncated, _Corrupt, OverflowError, MemoryError) as error:
        raise _format_error(path, str(error)) from error


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a GGUF file as a dict, without reading its tensors.

    Values are Python scalars, strings and lists; float32 fields are given as the decimal they
    were written from (``1e-05``, not ``9.999999747378752e-06``).

    Example:
        >>> meta = read_gguf_metadata("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> meta["general.architecture"], len(meta["tokenizer.ggml.tokens"])  # doctest: +SKIP
        ('llama', 49152)
    """
    path = Path(path)
    buffer, size = _open(path)
    try:
        return _parse_or_raise(path, buffer, size)[0]
    finally:
        buffer.close()


def load_gguf_checkpoint(path: str | os.PathLike, name: str | None = None) -> Checkpoint:
    """Opens a llama-architecture GGUF file as a Hugging Face-style `Checkpoint`.

    Only the metadata is read here (through a memory map that is closed again at once);
    ``read_tensor(hf_name)`` reads one tensor's bytes from the file and dequantizes them into a
    float32 array in Hugging Face layout (``[out, in]``, q/k rows in transformers' order), and
    ``read_row_range`` does the same for a range of rows, so that a large tensor can be converted
    piece by piece. Call ``close()`` to close the file.

    Raises `PresetError` if the file does not exist, `CheckpointFormatError` if it is truncated or
    corrupt, and `UnsupportedModelError` for architectures other than llama.

    Example:
        >>> ckpt = load_gguf_checkpoint("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> ckpt.config["num_hidden_layers"], ckpt.tensor_infos["model.norm.weight"].shape  # doctest: +SKIP
        (30, (576,))
    """
    path = Path(path)
    where = path.name
    buffer, size = _open(path)
    try:
        metadata, raw_tensors = _parse_or_raise(path, buffer, size)
    finally:
        # Tensors are read with plain file reads: a map would keep every page it touched resident
        # until close(), which adds the whole file to the peak memory of a load.
        buffer.close()
    handle = open(path, "rb")  # noqa: SIM115  (closed by the checkpoint's close())
    lock = threading.Lock()

    def read_raw(gguf_name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) (first axis) of a tensor, dequantized to float32."""
        tensor = raw_tensors[gguf_name]
        first = tensor.shape[0]
        stop = first if stop is None else stop
        # Quantization blocks run along the last axis, so a range of the first axis is one run of
        # bytes, except in a 1-D tensor, which is read whole.
        begin, end = (start, stop) if len(tensor.shape) > 1 else (0, first)
        stride = tensor.nbytes // first
        raw = np.empty((end - begin) * stride, dtype=np.uint8)
        with lock:
            handle.seek(tensor.offset + begin * stride)
            count = handle.readinto(memoryview(raw))
        if count != raw.size:
            raise _format_error(path, f"tensor {gguf_name} ends past the end of the file")
        raw = raw.reshape(
            (end - begin, *tensor.raw_shape[1:]) if len(tensor.shape) > 1 else tensor.raw_shape
        )
        try:
            array = gguf.quants.dequantize(raw, tensor.qtype)
        except NotImplementedError as error:
            raise UnsupportedModelError(
                f"{where}: tensor {gguf_name} is stored as {tensor.qtype.name}, which the "
                f"installed gguf package ({getattr(gguf, '__version__', '?')}) cannot "
                "dequantize; upgrade gguf or use a file of another quantization."
            ) from error
        array = array.astype(np.float32, copy=False)
        return array if len(tensor.shape) > 1 else array[start:stop]

    try:
        _check_architecture(metadata, where)

        unknown = [n for n in raw_tensors if n != _ROPE_FREQS and _hf_tensor_name(n) is None]
        # Old conversions carry RoPE's inverse frequencies as a buffer; they are recomputed.
        unknown = [n for n in unknown if not n.endswith(".attn_rot_embd")]
        if unknown:
            raise UnsupportedModelError(
                f"{where}: tensors {unknown[:5]} are not part of a llama model "
                f"({len(unknown)} unknown in all); this GGUF holds a variant that is not supported."
            )

        config = _hf_config(metadata, raw_tensors, read_raw, where)
        layers = {int(m.group(1)) for n in raw_tensors if (m := _LAYER_PATTERN.fullmatch(n))}
        if layers and max(layers) >= config["num_hidden_layers"]:
            raise CheckpointFormatError(
                f"{where}: the file has tensors for layer {max(layers)} but llama.block_count is "
                f"{config['num_hidden_layers']}. It looks corrupt; re-download it."
            )
        tokenizer_json, tokenizer_config, generation_config = _tokenizer(metadata, where)
    except BaseException:
        handle.close()
        raise

    by_hf_name = {
        hf_name: gguf_name
        for gguf_name in raw_tensors
        if (hf_name := _hf_tensor_name(gguf_name)) is not None
    }
    tensor_infos = {
        hf_name: TensorInfo(hf_name, raw_tensors[g].shape, raw_tensors[g].qtype.name)
        for hf_name, g in by_hf_name.items()
    }
    permuted_heads = {
        ".attn_q.": config["num_attention_heads"],
        ".attn_k.": config["num_key_value_heads"],
    }
    closed = False

    def read_row_range(hf_name: str, start: int, stop: int) -> np.ndarray:
        if closed:
            raise PresetError(
                f"{where}: the checkpoint was closed; load it again to read {hf_name}."
            )
        gguf_name = by_hf_name.get(hf_name)
        if gguf_name is None:
            raise KeyError(f"{hf_name!r} is not a tensor of {path}")
        heads = next((h for marker, h in permuted_heads.items() if marker in gguf_name), None)
        rows = raw_tensors[gguf_name].shape[0]
        if heads is None:
            array = read_raw(gguf_name, start, stop)
        elif rows % (2 * heads) == 0:
            # The rows are permuted within each head: read whole heads, put them back in order.
            per_head = rows // heads
            first, last = start // per_head * per_head, -(-stop // per_head) * per_head
            array = unpermute_rows(read_raw(gguf_name, first, last), (last - first) // per_head)
            array = array[start - first : stop - first]
        else:
            try:  # the heads do not fit the rows: this raises, naming the tensor
                array = unpermute_rows(read_raw(gguf_name), heads)[start:stop]
            except CheckpointFormatError as error:
                raise CheckpointFormatError(f"{where}: tensor {gguf_name}: {error}") from None
        # Checked per block, as the loader converts it.
        return refuse_non_finite(array, gguf_name, path, first_row=start)

    def read_tensor(hf_name: str) -> np.ndarray:
        gguf_name = by_hf_name.get(hf_name)
        rows = raw_tensors[gguf_name].shape[0] if gguf_name is not None else 0
        return read_row_range(hf_name, 0, rows)

    def close() -> None:
        nonlocal closed
        closed = True
        handle.close()

    return Checkpoint(
        name=name if name is not None else str(path),
        source=str(path),
        config=config,
        tensor_infos=tensor_infos,
        read_tensor=read_tensor,
        tokenizer_json=tokenizer_json,
        tokenizer_config=tokenizer_config,
        generation_config=generation_config,
        close=close,
        read_row_range=read_row_range,
    )
