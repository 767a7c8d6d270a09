"""Reading a llama.cpp GGUF file as a Hugging Face checkpoint.

A GGUF file holds what a Hugging Face folder spreads over several files: the model's hyperparameters
and its tokenizer as metadata (``llama.embedding_length``, ``tokenizer.ggml.tokens``, ...), and its
tensors under llama.cpp names, often quantized. `load_gguf_checkpoint` turns it into the same
`Checkpoint` a safetensors folder gives: a transformers ``config.json`` dict, a ``tokenizer.json``
string, and float32 tensors under Hugging Face names and layouts, dequantized one at a time.

Three things llama.cpp changes on the way in are undone, each in its own module:

- the rows of ``q_proj``/``k_proj`` are permuted (llama.cpp rotates interleaved pairs, transformers
  rotates halves), so they are permuted back (`gguf_tensor_names`, beside the names themselves);
- Llama 3.1/3.2 RoPE scaling is stored as a ``rope_freqs.weight`` tensor of per-frequency divisors
  rather than as parameters, so the parameters are recovered from it (`gguf_config`);
- the tokenizer is stored as vocabulary, merges and token types, so a ``tokenizers`` pipeline is
  rebuilt from them (`gguf_tokenizer`).

The file format itself (header, metadata, tensor infos, dequantization) is `gguf_reader`'s. This
module puts them together and keeps the names other modules import from it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, TensorInfo, refuse_non_finite
from .errors import CheckpointFormatError, PresetError, UnsupportedModelError
from .gguf_config import (
    SUPPORTED_ARCHITECTURES,
    check_architecture,
    hf_config,
    llama3_rope_divisors,
)
from .gguf_reader import read_gguf, read_gguf_metadata, read_tensor_rows
from .gguf_tensor_names import LAYER_PATTERN, ROPE_FREQS, hf_tensor_name, unpermute_rows
from .gguf_tokenizer import hf_tokenizer, sentencepiece_merges

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "llama3_rope_divisors",
    "load_gguf_checkpoint",
    "read_gguf_metadata",
    "sentencepiece_merges",
    "unpermute_rows",
]


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
    # The metadata is read through a map that is closed again at once; tensors are read with
    # plain file reads: a map would keep every page it touched resident until close(), which adds
    # the whole file to the peak memory of a load.
    metadata, raw_tensors = read_gguf(path)
    handle = open(path, "rb")  # noqa: SIM115  (closed by the checkpoint's close())
    lock = threading.Lock()

    def read_raw(gguf_name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) (first axis) of a tensor, dequantized to float32."""
        return read_tensor_rows(handle, lock, raw_tensors[gguf_name], path, start, stop)

    try:
        check_architecture(metadata, where)

        unknown = [n for n in raw_tensors if n != ROPE_FREQS and hf_tensor_name(n) is None]
        # Old conversions carry RoPE's inverse frequencies as a buffer; they are recomputed.
        unknown = [n for n in unknown if not n.endswith(".attn_rot_embd")]
        if unknown:
            raise UnsupportedModelError(
                f"{where}: tensors {unknown[:5]} are not part of a llama model "
                f"({len(unknown)} unknown in all); this GGUF holds a variant that is not supported."
            )

        config = hf_config(metadata, raw_tensors, read_raw, where)
        layers = {int(m.group(1)) for n in raw_tensors if (m := LAYER_PATTERN.fullmatch(n))}
        if layers and max(layers) >= config["num_hidden_layers"]:
            raise CheckpointFormatError(
                f"{where}: the file has tensors for layer {max(layers)} but llama.block_count is "
                f"{config['num_hidden_layers']}. It looks corrupt; re-download it."
            )
        tokenizer_json, tokenizer_config, generation_config = hf_tokenizer(metadata, where)
    except BaseException:
        handle.close()
        raise

    by_hf_name = {
        hf_name: gguf_name
        for gguf_name in raw_tensors
        if (hf_name := hf_tensor_name(gguf_name)) is not None
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
        # GGUF files carry the licence in their metadata (llama.cpp's convert writes it).
        card={"license": str(metadata["general.license"])}
        if metadata.get("general.license")
        else {},
        close=close,
        read_row_range=read_row_range,
    )
