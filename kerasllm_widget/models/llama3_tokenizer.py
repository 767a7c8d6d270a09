"""The Llama 3 tokenizer, keras_hub's name over Hugging Face's Rust ``tokenizers``.

It reads the checkpoint's own ``tokenizer.json`` (byte-level BPE for Llama 3 and SmolLM2,
SentencePiece-style BPE for Llama 2 and TinyLlama), so text becomes exactly the ids the reference
implementation makes, with no TensorFlow in the way.
"""

from __future__ import annotations

import bisect
import inspect
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from kerasllm_widget.checkpoints.checkpoint import Checkpoint, path_exists, read_text_file
from kerasllm_widget.checkpoints.errors import PresetError
from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.models.chat_template import (
    LLAMA3_CHAT_TEMPLATE,
    ChatTemplateError,
    render_chat_template,
    select_chat_template,
)

__all__ = ["Llama3Tokenizer"]

# How whitespace is shown in token pieces: a visible mark, so that " the" and "the" differ on screen.
_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SENTENCEPIECE_SPACE = "▁"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's byte-level alphabet: every byte gets a printable character ("Ġ" is the space byte,
    # "Ċ" the newline), which is how byte-level BPE vocabularies spell their tokens.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


_BYTE_LEVEL_DECODER = {char: byte for byte, char in _bytes_to_unicode().items()}


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as strings or as serialized AddedToken dicts.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return value.get("content")
    return str(value)


def readable_bytes(data: bytes) -> str:
    """Bytes as text with visible whitespace; bytes that are not part of a whole UTF-8 character
    are shown as ``<0xF0>`` so a token holding half an emoji still has a label.

    Example:
        >>> readable_bytes(b" Hello\\n"), readable_bytes("🙂".encode()[:2])
        ('␣Hello↵', '<0xF0><0x9F>')
    """
    text = data.decode("utf-8", errors="surrogateescape")
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, escaped by surrogateescape
            out.append(f"<0x{code - 0xDC00:02X}>")
        else:
            out.append(char)
    return "".join(out).translate(_VISIBLE_WHITESPACE)


def _mark_special_strings(
    value: Any, pattern: re.Pattern[str], marker: str, found: list[str]
) -> Any:
    # Every special-token string in the text of ``value`` becomes ``marker`` + its index in
    # ``found``: a placeholder no tokenizer knows, that survives the template as it is.
    if isinstance(value, str):

        def mark(match: re.Match[str]) -> str:
            found.append(match.group(0))
            return f"{marker}{len(found) - 1}\ue001"

        return pattern.sub(mark, value)
    if isinstance(value, Mapping):
        return {k: _mark_special_strings(v, pattern, marker, found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark_special_strings(v, pattern, marker, found) for v in value]
    return value


def _restore_special_strings(
    text: str, marker: str, found: list[str]
) -> tuple[str, list[tuple[int, int]]]:
    # The placeholders back to their special-token strings, with the [start, end) span of each.
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    size = last = 0
    for match in re.finditer(re.escape(marker) + r"(\d+)\ue001", text):
        pieces.append(text[last : match.start()])
        size += match.start() - last
        original = found[int(match.group(1))]
        spans.append((size, size + len(original)))
        pieces.append(original)
        size += len(original)
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces), spans


def _load_backend(tokenizer_json: str | os.PathLike | Tokenizer) -> Tokenizer:
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
        self.backend: Tokenizer = _load_backend(tokenizer_json)
        self._bos_id = self._resolve_token(bos_token, "bos_token")
        self._eos_id = self._resolve_token(eos_token, "eos_token")
        self._pad_id = self._resolve_token(pad_token, "pad_token")
        prefix = self._post_processor_prefix()
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
        try:
            return cls(
                checkpoint.tokenizer_json,
                bos_token=bos_token,
                eos_token=eos_token,
                pad_token=_token_text(config.get("pad_token")),
                add_bos=config.get("add_bos_token"),
                chat_template=select_chat_template(config.get("chat_template")),
                stop_token_ids=generation_eos or (),
            )
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

    def _post_processor_prefix(self) -> list[int]:
        # What the tokenizer.json's post-processor puts before the text when asked for special
        # tokens: Llama 3.x's TemplateProcessing gives [128000]; byte-level only gives [].
        with_special = self.backend.encode("a", add_special_tokens=True).ids
        plain = self.backend.encode("a", add_special_tokens=False).ids
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start : start + len(plain)] == plain:
                return with_special[:start]
        return []

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
        # Longest first, so that a special token that begins another one does not win.
        texts = sorted(
            {self.backend.id_to_token(i) or "" for i in self.special_token_ids} - {""},
            key=len,
            reverse=True,
        )
        return re.compile("|".join(map(re.escape, texts))) if texts else None

    @cached_property
    def _escaping_backend(self) -> Tokenizer:
        # A copy that reads special-token strings as text. A copy rather than toggling
        # `encode_special_tokens` on `backend`, which other threads (the token inspector) use
        # at the same time. Built on first use: 0.6 s for Llama 3's tokenizer.json.
        backend = Tokenizer.from_str(self.backend.to_str())
        backend.encode_special_tokens = True
        return backend

    @cached_property
    def _is_byte_level(self) -> bool:
        decoder = self.backend.decoder
        state = decoder.__getstate__() if decoder is not None else b""
        return b'"ByteLevel"' in state

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
        if self._is_byte_level:
            if all(char in _BYTE_LEVEL_DECODER for char in token):
                return bytes(_BYTE_LEVEL_DECODER[char] for char in token)
            return token.encode("utf-8")  # an added (non byte-level) token
        match = _BYTE_FALLBACK.match(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")

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
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Renders a conversation with this checkpoint's chat template (as transformers'
        ``apply_chat_template(..., tokenize=False)``), the tokenizer's special tokens passed in.

        Example:
            >>> tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}])  # doctest: +SKIP
            '<|begin_of_text|><|start_header_id|>system<|end_header_id|>...'
        """
        special = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
        }
        special = {k: v for k, v in special.items() if v is not None}
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            **{**special, **extra},
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
            spans = self._content_special_spans(messages, text, add_generation_prompt, extra)
            if spans:
                ids = self._escaped_ids(text, ids, encoding.offsets, spans)
        if add_start_token and self.add_bos and (not ids or ids[0] != self._bos_id):
            ids = [self._bos_id, *ids]
        return ids

    def _content_special_spans(
        self,
        messages: Sequence[Mapping[str, Any]],
        text: str,
        add_generation_prompt: bool,
        extra: Mapping[str, Any],
    ) -> list[tuple[int, int]]:
        """Character spans in the rendered ``text`` of special-token strings that came from
        message content: the conversation is rendered again with each one replaced by a
        placeholder, so wherever the template puts (or trims) content, the spans are exact."""
        marker = f"\ue000{secrets.token_hex(4)}:"
        found: list[str] = []
        marked = [
            {
                **m,
                "content": _mark_special_strings(
                    m["content"], self._special_token_pattern, marker, found
                ),
            }
            # What people typed (user, system); the model's own replies keep the special
            # tokens it produced.
            if isinstance(m, Mapping) and "content" in m and m.get("role") != "assistant"
            else m
            for m in messages
        ]
        if not found:
            return []
        marked_text = self.apply_chat_template(
            marked, add_generation_prompt=add_generation_prompt, **extra
        )
        restored, spans = _restore_special_strings(marked_text, marker, found)
        if restored != text:
            raise ChatTemplateError(
                "escape_special_tokens: this chat template changes message content before "
                "writing it (it slices, measures or reorders it), so the special-token strings "
                "inside messages cannot be told apart from the template's own. Remove them from "
                "the messages or pass escape_special_tokens=False."
            )
        return spans

    def _escaped_ids(
        self,
        text: str,
        ids: list[int],
        offsets: Sequence[tuple[int, int]],
        spans: list[tuple[int, int]],
    ) -> list[int]:
        """``ids`` (the plain encoding of ``text``) with each stretch between two of the
        template's special tokens that holds an escaped span encoded again, special-token
        strings read as text. The tokenizer splits text at special tokens before anything else,
        so every other stretch keeps exactly its ids."""
        # Spans are in text order and do not overlap, so their starts and ends are both sorted.
        starts = [a for a, _ in spans]
        ends = [b for _, b in spans]

        def inside_a_span(start: int, end: int) -> bool:
            k = bisect.bisect_right(starts, start) - 1
            return k >= 0 and end <= ends[k]

        def meets_a_span(start: int, end: int) -> bool:
            k = bisect.bisect_right(ends, start)
            return k < len(spans) and starts[k] < end

        boundaries = [
            i
            for i, token_id in enumerate(ids)
            if token_id in self.special_token_ids and not inside_a_span(*offsets[i])
        ]
        out: list[int] = []
        previous = -1
        for boundary in [*boundaries, len(ids)]:
            start = offsets[previous][1] if previous >= 0 else 0
            end = offsets[boundary][0] if boundary < len(ids) else len(text)
            if meets_a_span(start, end):
                stretch = self._escaping_backend.encode(text[start:end], add_special_tokens=False)
                out += stretch.ids
            else:
                out += ids[previous + 1 : boundary]
            if boundary < len(ids):
                out.append(ids[boundary])
            previous = boundary
        return out

    def __repr__(self) -> str:
        return (
            f"Llama3Tokenizer(vocabulary_size={self.vocabulary_size()}, bos={self.bos_token!r}, "
            f"eos={self.eos_token!r}, add_bos={self.add_bos}, stop_token_ids={list(self.stop_token_ids)})"
        )
