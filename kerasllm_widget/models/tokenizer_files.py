"""Reading a Hugging Face tokenizer: its ``tokenizer.json``, and what ``tokenizer_config.json``,
``config.json`` and ``generation_config.json`` say about its special tokens.

`Llama3Tokenizer` is built from these (`Llama3Tokenizer.from_checkpoint`); the checkpoint loaders
in `checkpoints` give them as a `Checkpoint`, whether they came from a folder or a GGUF file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from kerasllm_widget.checkpoints.checkpoint import Checkpoint, path_exists, read_text_file
from kerasllm_widget.models.chat_template import select_chat_template

__all__ = ["checkpoint_tokenizer_options", "load_tokenizer_json", "post_processor_prefix"]


def load_tokenizer_json(tokenizer_json: str | os.PathLike | Tokenizer) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from the text of a ``tokenizer.json``, its path, or a folder
    holding one (a ``Tokenizer`` is returned as it is).

    Raises `FileNotFoundError` when there is no such file and `ValueError` when it is not a
    valid tokenizer.json.

    Example:
        >>> load_tokenizer_json("models/Llama-3.2-1B-Instruct").get_vocab_size()  # doctest: +SKIP
        128256
    """
    if isinstance(tokenizer_json, Tokenizer):
        return tokenizer_json
    if isinstance(tokenizer_json, str) and tokenizer_json.lstrip().startswith("{"):
        try:
            return Tokenizer.from_str(tokenizer_json)
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"tokenizer JSON could not be read: {error}") from error
    path = Path(tokenizer_json)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        path_exists(path)  # a symlink loop is named as one, not as a missing file
        raise FileNotFoundError(
            f"no tokenizer file at {path}: pass the text of a tokenizer.json, its path, "
            "or a folder that holds one"
        )
    text = read_text_file(path)  # bytes that are not UTF-8: an error naming the file and byte
    try:
        return Tokenizer.from_str(text)
    except Exception as error:
        raise ValueError(f"{path} is not a valid tokenizer.json: {error}") from error


def post_processor_prefix(backend: Tokenizer) -> list[int]:
    """What the tokenizer.json's post-processor puts before the text when asked for special
    tokens: Llama 3.x's TemplateProcessing gives ``[128000]``; byte-level only gives ``[]``.

    Example:
        >>> post_processor_prefix(load_tokenizer_json("models/Llama-3.2-1B-Instruct"))  # doctest: +SKIP
        [128000]
    """
    with_special = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as strings or as serialized AddedToken dicts.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return value.get("content")
    return str(value)


def checkpoint_tokenizer_options(checkpoint: Checkpoint) -> dict[str, Any]:
    """`Llama3Tokenizer`'s keyword arguments besides the tokenizer.json, as a checkpoint's
    ``tokenizer_config.json``, ``config.json`` and ``generation_config.json`` give them.

    Example:
        >>> checkpoint_tokenizer_options(load_checkpoint("smollm2-135m-instruct"))["eos_token"]  # doctest: +SKIP
        '<|im_end|>'
    """
    config = checkpoint.tokenizer_config or {}
    model_config = checkpoint.config or {}
    generation_eos = (checkpoint.generation_config or {}).get("eos_token_id")
    if generation_eos is None:
        generation_eos = model_config.get("eos_token_id")
    if isinstance(generation_eos, int):
        generation_eos = [generation_eos]
    # Without tokenizer_config.json, config.json's ids name BOS and EOS (as transformers'
    # generate does); the tokenizer config wins where it has them.
    bos_token = _token_text(config.get("bos_token"))
    if bos_token is None and isinstance(model_config.get("bos_token_id"), int):
        bos_token = model_config["bos_token_id"]
    eos_token = _token_text(config.get("eos_token"))
    if eos_token is None and generation_eos:
        eos_token = generation_eos[0]
    return {
        "bos_token": bos_token,
        "eos_token": eos_token,
        "pad_token": _token_text(config.get("pad_token")),
        "add_bos": config.get("add_bos_token"),
        "chat_template": select_chat_template(config.get("chat_template")),
        "stop_token_ids": generation_eos or (),
    }
