"""The Llama 3 tokenizer, keras_hub's name over Hugging Face's Rust ``tokenizers``.

It reads the checkpoint's own ``tokenizer.json`` (byte-level BPE for Llama 3 and SmolLM2,
SentencePiece-style BPE for Llama 2 and TinyLlama), so text becomes exactly the ids the reference
implementation makes, with no TensorFlow in the way.

Beside it: reading the tokenizer files (`tokenizer_files`), the bytes behind a token
(`token_bytes`), and special-token strings typed in chat messages (`special_token_escaping`).
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from kerasllm_widget.checkpoints.checkpoint import Checkpoint
from kerasllm_widget.checkpoints.errors import PresetError
from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.models.chat_template import LLAMA3_CHAT_TEMPLATE
from kerasllm_widget.models.chat_template_call import apply_chat_template
from kerasllm_widget.models.special_token_escaping import (
    content_special_spans,
    escaped_ids,
    escaping_backend,
    special_token_pattern,
)
from kerasllm_widget.models.token_bytes import is_byte_level, readable_bytes, token_string_bytes
from kerasllm_widget.models.tokenizer_files import (
    checkpoint_tokenizer_options,
    load_tokenizer_json,
    post_processor_prefix,
)

__all__ = ["Llama3Tokenizer"]


class Llama3Tokenizer:
    """Text to token ids and back, with keras_hub's names, over a Hugging Face tokenizer.json.

    Plain calls add no special tokens (the preprocessor adds BOS/EOS). Special tokens written in
    the text (``<|eot_id|>``) stay single tokens.

    Args:
        tokenizer_json: the text of a ``tokenizer.json``, its path, a folder holding it, or a
            ``tokenizers.Tokenizer``.
        bos_token, eos_token, pad_token: token strings (or ids) as in ``tokenizer_config.json``.
        add_bos: whether sequences start with BOS; ``None`` asks the tokenizer.json's post-processor.
        chat_template: Jinja chat template (``None``: the Llama 3 header format).
        stop_token_ids: ids that end generation besides ``eos_token`` (``generation_config.json``).

    Example:
        >>> tokenizer = Llama3Tokenizer.from_preset("hf://meta-llama/Llama-3.2-1B-Instruct")  # doctest: +SKIP
        >>> tokenizer("Hello")  # doctest: +SKIP
        array([9906], dtype=int32)
    """

    def __init__(
        self,
        tokenizer_json: str | os.PathLike | Tokenizer,
        *,
        bos_token: str | int | None = None,
        eos_token: str | int | None = None,
        pad_token: str | int | None = None,
        add_bos: bool | None = None,
        chat_template: str | None = None,
        stop_token_ids: Iterable[int] | None = None,
    ) -> None:
        self.backend: Tokenizer = load_tokenizer_json(tokenizer_json)
        self._bos_id = self._resolve_token(bos_token, "bos_token")
        self._eos_id = self._resolve_token(eos_token, "eos_token")
        self._pad_id = self._resolve_token(pad_token, "pad_token")
        prefix = post_processor_prefix(self.backend)
        if self._bos_id is None and prefix:
            # A tokenizer.json that prepends a special token names its BOS even when the config
            # does not (Llama 3's tokenizer.json without tokenizer_config.json).
            self._bos_id = prefix[0]
        if add_bos is None:
            add_bos = self._bos_id is not None and bool(prefix) and prefix[0] == self._bos_id
        self.add_bos: bool = bool(add_bos) and self._bos_id is not None
        self.chat_template: str | None = chat_template
        extra_stops = [int(i) for i in (stop_token_ids or ())]
        stops = ([self._eos_id] if self._eos_id is not None else []) + extra_stops
        self._stop_token_ids = tuple(dict.fromkeys(stops))
        vocabulary_size = self.vocabulary_size()
        for token_id in self._stop_token_ids:
            if not 0 <= token_id < vocabulary_size:
                raise ValueError(
                    f"stop token id {token_id} is outside the vocabulary (size {vocabulary_size}); "
                    "check generation_config.json's eos_token_id"
                )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> Llama3Tokenizer:
        """Builds the tokenizer a checkpoint describes (tokenizer.json, tokenizer_config.json,
        generation_config.json).

        Example:
            >>> tokenizer = Llama3Tokenizer.from_checkpoint(load_checkpoint("smollm2-135m-instruct"))  # doctest: +SKIP
        """
        if not checkpoint.tokenizer_json:
            raise PresetError(
                f"{checkpoint.name}: the checkpoint has no tokenizer (tokenizer.json missing in "
                f"{checkpoint.source}); add the tokenizer.json of the model it was trained with"
            )
        options = checkpoint_tokenizer_options(checkpoint)
        try:
            return cls(checkpoint.tokenizer_json, **options)
        except ValueError as error:
            raise PresetError(
                f"{checkpoint.name}: tokenizer in {checkpoint.source}: {error}"
            ) from error

    @classmethod
    def from_preset(cls, preset: str) -> Llama3Tokenizer:
        """Loads the tokenizer of a preset (``hf://org/name``, a folder, a ``.gguf``, a built-in
        name) without reading its weights.

        Example:
            >>> tokenizer = Llama3Tokenizer.from_preset("smollm2-135m-instruct")  # doctest: +SKIP
        """
        # The tokenizer needs no weights: ask the loader not to open them where it can.
        options = {}
        if "load_tensors" in inspect.signature(load_checkpoint).parameters:
            options["load_tensors"] = False
        checkpoint = load_checkpoint(preset, **options)
        try:
            return cls.from_checkpoint(checkpoint)
        finally:
            checkpoint.close()

    def get_config(self) -> dict[str, Any]:
        """A JSON-serializable config; `from_config` rebuilds an equal tokenizer.

        Example:
            >>> clone = Llama3Tokenizer.from_config(tokenizer.get_config())  # doctest: +SKIP
        """
        return {
            "tokenizer_json": self.backend.to_str(),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos": self.add_bos,
            "chat_template": self.chat_template,
            "stop_token_ids": list(self._stop_token_ids),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Llama3Tokenizer:
        """Rebuilds a tokenizer from `get_config`'s output.

        Example:
            >>> clone = Llama3Tokenizer.from_config(tokenizer.get_config())  # doctest: +SKIP
        """
        return cls(**dict(config))

    def save_to_preset(self, directory: str | os.PathLike) -> None:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json`` in Hugging Face layout.

        Example:
            >>> tokenizer.save_to_preset("my-model")  # doctest: +SKIP
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config: dict[str, Any] = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": self.add_bos,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        if self.pad_token is not None:
            config["pad_token"] = self.pad_token
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        with open(directory / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)

    # ----------------------------------------------------------------- vocabulary
    def vocabulary_size(self) -> int:
        """Number of ids, added special tokens included (128256 for Llama 3)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocabulary(self) -> list[str]:
        """Every token string, indexed by id."""
        return [self.backend.id_to_token(i) or "" for i in range(self.vocabulary_size())]

    def id_to_token(self, id: int) -> str:
        """The vocabulary string of one id (byte-level spelling: ``"ĠHello"``).

        Example:
            >>> tokenizer.id_to_token(9906)  # doctest: +SKIP
            'Hello'
        """
        token = self.backend.id_to_token(int(id))
        if token is None:
            raise ValueError(f"id {id} is not in the vocabulary (size {self.vocabulary_size()})")
        return token

    def token_to_id(self, token: str) -> int:
        """The id of one vocabulary string.

        Example:
            >>> tokenizer.token_to_id("<|eot_id|>")  # doctest: +SKIP
            128009
        """
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    def _resolve_token(self, token: str | int | None, field: str) -> int | None:
        if token is None:
            return None
        if isinstance(token, (int, np.integer)):
            if not 0 <= int(token) < self.vocabulary_size():
                raise ValueError(f"{field} id {token} is outside the vocabulary")
            return int(token)
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{field} {token!r} is not in the tokenizer's vocabulary")
        return token_id

    @property
    def bos_token(self) -> str | None:
        return None if self._bos_id is None else self.backend.id_to_token(self._bos_id)

    @property
    def eos_token(self) -> str | None:
        return None if self._eos_id is None else self.backend.id_to_token(self._eos_id)

    @property
    def pad_token(self) -> str | None:
        return None if self._pad_id is None else self.backend.id_to_token(self._pad_id)

    @property
    def start_token_id(self) -> int | None:
        """BOS id (128000 for Llama 3), or None when the checkpoint has none."""
        return self._bos_id

    @property
    def end_token_id(self) -> int | None:
        """EOS id from tokenizer_config.json (128009 ``<|eot_id|>`` for Llama 3.2 Instruct)."""
        return self._eos_id

    @property
    def pad_token_id(self) -> int:
        """Pad id: the checkpoint's pad token, else 0 as in keras_hub (the mask marks padding)."""
        return 0 if self._pad_id is None else self._pad_id

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation: EOS first, then generation_config.json's eos_token_id list."""
        return self._stop_token_ids

    @cached_property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the added tokens marked special (``<|begin_of_text|>``, ``<|eot_id|>``, ...)."""
        return frozenset(
            token_id
            for token_id, token in self.backend.get_added_tokens_decoder().items()
            if token.special
        )

    @cached_property
    def _special_token_pattern(self) -> re.Pattern[str] | None:
        return special_token_pattern(
            self.backend.id_to_token(i) or "" for i in self.special_token_ids
        )

    @cached_property
    def _escaping_backend(self) -> Tokenizer:
        return escaping_backend(self.backend)  # built on first use: 0.6 s for Llama 3's

    @cached_property
    def _is_byte_level(self) -> bool:
        return is_byte_level(self.backend)

    # ----------------------------------------------------------------- text -> ids
    def __call__(self, inputs: str | Sequence[str]) -> np.ndarray | list[np.ndarray]:
        """Same as `tokenize`: ``tokenizer("Hello")`` gives ``array([9906], dtype=int32)``."""
        return self.tokenize(inputs)

    def tokenize(
        self, inputs: str | bytes | Sequence[str] | np.ndarray
    ) -> np.ndarray | list[np.ndarray]:
        """Token ids of a string (int32 array) or of a list of strings (list of int32 arrays).

        No special tokens are added; special tokens written in the text are recognised.

        Example:
            >>> tokenizer.tokenize(["Hello", "Hi!"])  # doctest: +SKIP
            [array([9906], dtype=int32), array([13347, 0], dtype=int32)]
        """
        if isinstance(inputs, np.ndarray) and inputs.ndim == 0:
            inputs = inputs.item()
        if isinstance(inputs, (str, bytes)):
            text = inputs.decode("utf-8") if isinstance(inputs, bytes) else inputs
            ids = self.backend.encode(text, add_special_tokens=False).ids
            return np.asarray(ids, dtype=np.int32)
        texts = [t.decode("utf-8") if isinstance(t, bytes) else t for t in list(inputs)]
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"tokenize expects strings; item {index} is {type(text).__name__}")
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def tokenize_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Ids and ``[start, end)`` character offsets into ``text`` for each token.

        Example:
            >>> ids, offsets = tokenizer.tokenize_with_offsets("Hi there")  # doctest: +SKIP
            >>> offsets.tolist()  # doctest: +SKIP
            [[0, 2], [2, 8]]
        """
        encoding = self.backend.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int32)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        return ids, offsets

    def token_bytes(self, id: int) -> bytes:
        """The bytes one token stands for (a split emoji token gives part of its UTF-8).

        Example:
            >>> tokenizer.token_bytes(9906)  # doctest: +SKIP
            b'Hello'
        """
        token = self.id_to_token(id)
        if id in self.special_token_ids:
            return token.encode("utf-8")
        return token_string_bytes(token, byte_level=self._is_byte_level)

    def tokenize_pieces(self, text: str) -> list[dict[str, Any]]:
        """Each token of ``text`` with what the token inspector shows.

        Returns dicts with ``id``, ``piece`` (readable: ``"␣world"``, ``"↵"``, ``"<0xF0>"`` for
        a byte that is not a whole character), ``bytes``, ``is_special``, and ``start``/``end``
        character offsets into ``text``.

        Example:
            >>> [p["piece"] for p in tokenizer.tokenize_pieces("Hello world\\n")]  # doctest: +SKIP
            ['Hello', '␣world', '↵']
        """
        ids, offsets = self.tokenize_with_offsets(text)
        pieces = []
        for token_id, (start, end) in zip(ids.tolist(), offsets.tolist(), strict=True):
            is_special = token_id in self.special_token_ids
            data = self.token_bytes(token_id)
            pieces.append(
                {
                    "id": token_id,
                    "piece": self.id_to_token(token_id) if is_special else readable_bytes(data),
                    "bytes": data,
                    "is_special": is_special,
                    "start": start,
                    "end": end,
                }
            )
        return pieces

    # ----------------------------------------------------------------- ids -> text
    def detokenize(
        self,
        ids: int | Sequence[int] | Sequence[Sequence[int]] | np.ndarray,
        *,
        skip_special_tokens: bool = False,
    ) -> str | list[str]:
        """Text of a sequence of ids (a string), or of a batch (a list of strings).

        Special tokens are kept unless ``skip_special_tokens``.

        Example:
            >>> tokenizer.detokenize([9906])  # doctest: +SKIP
            'Hello'
        """
        if isinstance(ids, (int, np.integer)):
            ids = [int(ids)]
        if isinstance(ids, np.ndarray):
            if ids.ndim == 0:
                ids = ids.reshape(1)
            if ids.ndim == 2:
                return self.backend.decode_batch(
                    ids.astype(np.int64).tolist(), skip_special_tokens=skip_special_tokens
                )
            ids = ids.astype(np.int64).tolist()
        ids = list(ids)
        if ids and not isinstance(ids[0], (int, np.integer)):
            return self.backend.decode_batch(
                [[int(i) for i in row] for row in ids], skip_special_tokens=skip_special_tokens
            )
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ----------------------------------------------------------------- chat
    @property
    def effective_chat_template(self) -> str:
        """The template `apply_chat_template` renders with: the checkpoint's own, or the Llama 3
        Instruct template when it has none (what `save_to_preset` of a model writes out).

        Example:
            >>> tokenizer.effective_chat_template.startswith("{%")  # doctest: +SKIP
            True
        """
        return LLAMA3_CHAT_TEMPLATE if self.chat_template is None else self.chat_template

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Any] | None = None,
        documents: Sequence[Any] | None = None,
        chat_template: str | None = None,
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        **extra: Any,
    ) -> Any:
        """Renders a conversation with this checkpoint's chat template, with transformers'
        keywords (``tools``, ``continue_final_message``, ``tokenize``, ...: see
        `chat_template_call`); unlike transformers, text with the generation prompt by default.

        Example:
            >>> tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}])  # doctest: +SKIP
            '<|begin_of_text|><|start_header_id|>system<|end_header_id|>...'
        """
        return apply_chat_template(
            self,
            messages,
            tools=tools,
            documents=documents,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=tokenize,
            return_dict=return_dict,
            **extra,
        )

    def chat_prompt_ids(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        escape_special_tokens: bool = False,
        add_start_token: bool = True,
        **extra: Any,
    ) -> list[int]:
        """Token ids of a conversation rendered with the chat template, ready to generate from.

        The same ids as ``preprocessor.generate_preprocess(tokenizer.apply_chat_template(
        messages))["token_ids"]``: BOS is put first when the checkpoint asks for one and the
        template did not write it (``add_start_token=False``: never).

        Special-token strings in the text (``<|eot_id|>``) are read as special tokens, the
        template's and the messages' alike. With ``escape_special_tokens=True``, those written
        inside user and system messages (a user typing ``<|im_start|>system``) are tokenized as
        the plain text they are (assistant replies keep the special tokens the model made); the template's own special tokens and the ids of all other text stay the
        same.

        Example:
            >>> messages = [{"role": "user", "content": "What is <|eot_id|>?"}]
            >>> plain = tokenizer.chat_prompt_ids(messages)  # doctest: +SKIP
            >>> escaped = tokenizer.chat_prompt_ids(messages, escape_special_tokens=True)  # doctest: +SKIP
            >>> plain.count(128009) - escaped.count(128009)  # the user's one is text now  # doctest: +SKIP
            1
        """
        text = self.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, **extra
        )
        encoding = self.backend.encode(text, add_special_tokens=False)
        ids = list(encoding.ids)
        if escape_special_tokens and self._special_token_pattern is not None:
            render = partial(
                self.apply_chat_template, add_generation_prompt=add_generation_prompt, **extra
            )
            spans = content_special_spans(render, messages, text, self._special_token_pattern)
            if spans:
                special, escaping = self.special_token_ids, self._escaping_backend
                ids = escaped_ids(text, ids, encoding.offsets, spans, special, escaping)
        if add_start_token and self.add_bos and (not ids or ids[0] != self._bos_id):
            ids = [self._bos_id, *ids]
        return ids

    def __repr__(self) -> str:
        return (
            f"Llama3Tokenizer(vocabulary_size={self.vocabulary_size()}, bos={self.bos_token!r}, "
            f"eos={self.eos_token!r}, add_bos={self.add_bos}, stop_token_ids={list(self.stop_token_ids)})"
        )
