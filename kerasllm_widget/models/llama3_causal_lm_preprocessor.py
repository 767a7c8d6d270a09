"""What the causal language model reads: token ids, a padding mask, and labels shifted by one.

keras_hub's ``Llama3CausalLMPreprocessor`` semantics over numpy: strings are tokenized, the start
token (when the checkpoint's tokenizer asks for one) and the end token are added, sequences are
cut or right-padded to ``sequence_length + 1``, and then split into inputs ``ids[:-1]`` and labels
``ids[1:]``. Conversations (lists of ``{"role", "content"}``) are rendered with the chat template
and only the assistant's turns are weighted, so fine-tuning teaches answers, not questions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

__all__ = ["Llama3CausalLMPreprocessor"]

Conversation = Sequence[Mapping[str, Any]]


def _is_conversation(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(m, Mapping) and "role" in m for m in value)
    )


class Llama3CausalLMPreprocessor:
    """Turns text (or conversations) into ``({"token_ids", "padding_mask"}, labels, sample_weight)``.

    Args:
        tokenizer: a `Llama3Tokenizer`.
        sequence_length: length of the packed inputs (labels have the same length).
        add_start_token: prepend BOS, when the checkpoint's tokenizer asks for it.
        add_end_token: append the EOS of ``tokenizer_config.json``.

    Example:
        >>> preprocessor = Llama3CausalLMPreprocessor.from_preset(
        ...     "hf://meta-llama/Llama-3.2-1B-Instruct")  # doctest: +SKIP
        >>> x, labels, sample_weight = preprocessor("Hello", sequence_length=6)  # doctest: +SKIP
        >>> x["token_ids"]  # doctest: +SKIP
        array([128000,   9906, 128009,      0,      0,      0], dtype=int32)
        >>> labels  # doctest: +SKIP
        array([  9906, 128009,      0,      0,      0,      0], dtype=int32)
    """

    def __init__(
        self,
        tokenizer: Llama3Tokenizer,
        sequence_length: int = 1024,
        add_start_token: bool = True,
        add_end_token: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.add_start_token = bool(add_start_token)
        self.add_end_token = bool(add_end_token)

    @classmethod
    def from_preset(
        cls, preset: str, sequence_length: int = 1024, **kwargs: Any
    ) -> Llama3CausalLMPreprocessor:
        """Tokenizer and preprocessor of a preset, without reading its weights.

        Example:
            >>> preprocessor = Llama3CausalLMPreprocessor.from_preset(
            ...     "smollm2-135m-instruct", sequence_length=256)  # doctest: +SKIP
        """
        return cls(Llama3Tokenizer.from_preset(preset), sequence_length=sequence_length, **kwargs)

    def get_config(self) -> dict[str, Any]:
        """JSON-serializable config, the tokenizer's included; see `from_config`.

        Example:
            >>> clone = Llama3CausalLMPreprocessor.from_config(preprocessor.get_config())  # doctest: +SKIP
        """
        return {
            "tokenizer": self.tokenizer.get_config(),
            "sequence_length": self.sequence_length,
            "add_start_token": self.add_start_token,
            "add_end_token": self.add_end_token,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Llama3CausalLMPreprocessor:
        """Rebuilds a preprocessor from `get_config`'s output.

        Example:
            >>> clone = Llama3CausalLMPreprocessor.from_config(preprocessor.get_config())  # doctest: +SKIP
        """
        config = dict(config)
        tokenizer = config.pop("tokenizer")
        if not isinstance(tokenizer, Llama3Tokenizer):
            tokenizer = Llama3Tokenizer.from_config(tokenizer)
        return cls(tokenizer, **config)

    # ----------------------------------------------------------------- training inputs
    def __call__(
        self,
        x: str | Sequence[str] | Conversation | Sequence[Conversation],
        y: Any = None,
        sample_weight: Any = None,
        sequence_length: int | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Packs ``x`` for training: returns ``(x_dict, labels, sample_weight)``.

        A string (or one conversation) gives arrays of shape ``[sequence_length]``; a list gives
        ``[batch, sequence_length]``. ``sample_weight`` is the padding mask shifted by one
        (bool), times the ``sample_weight`` passed in, if any (float32). For conversations it is
        true only where the label is a token of an assistant turn.

        Example:
            >>> x, labels, weights = preprocessor(["Hello", "Hi!"], sequence_length=8)  # doctest: +SKIP
            >>> x["token_ids"].shape  # doctest: +SKIP
            (2, 8)
        """
        if y is not None:
            raise ValueError(
                "Llama3CausalLMPreprocessor makes its labels from x (the text shifted by one "
                "token); pass the text only, y=None"
            )
        length = self.sequence_length if sequence_length is None else int(sequence_length)
        if length < 1:
            raise ValueError(f"sequence_length must be at least 1, got {length}")
        texts, weights, batched = self._tokenize_inputs(x)
        token_ids, padding_mask, loss_mask = self._pack(
            texts, weights, length + 1, self.add_start_token, self.add_end_token
        )
        features = {"token_ids": token_ids[:, :-1], "padding_mask": padding_mask[:, :-1]}
        labels = token_ids[:, 1:]
        weight = loss_mask[:, 1:]
        if sample_weight is not None:
            extra = np.asarray(sample_weight, dtype=np.float32)
            if extra.ndim == 1 and batched:
                extra = extra[:, None]
            weight = weight.astype(np.float32) * extra
        if not batched:
            features = {k: v[0] for k, v in features.items()}
            labels, weight = labels[0], weight[0]
        return features, labels, weight

    # ----------------------------------------------------------------- generation inputs
    def generate_preprocess(
        self,
        x: str | Sequence[str] | Conversation | Sequence[Conversation],
        sequence_length: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Prompt ids for generation: the start token, no end token.

        With ``sequence_length=None`` nothing is padded (a batch is right-padded to its longest
        prompt); otherwise prompts are cut or right-padded to it. Conversations are rendered with
        the generation prompt (the assistant header) at the end.

        Example:
            >>> preprocessor.generate_preprocess("Hello")["token_ids"]  # doctest: +SKIP
            array([128000,   9906], dtype=int32)
        """
        texts, _, batched = self._tokenize_inputs(x, add_generation_prompt=True)
        length = None if sequence_length is None else int(sequence_length)
        token_ids, padding_mask, _ = self._pack(texts, None, length, self.add_start_token, False)
        if not batched:
            return {"token_ids": token_ids[0], "padding_mask": padding_mask[0]}
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def generate_postprocess(self, x: Mapping[str, np.ndarray]) -> str | list[str]:
        """Text of generated ids: padding, the start token and stop tokens are dropped.

        Example:
            >>> preprocessor.generate_postprocess(
            ...     {"token_ids": np.array([128000, 9906, 128009]),
            ...      "padding_mask": np.array([True, True, True])})  # doctest: +SKIP
            'Hello'
        """
        token_ids = np.asarray(x["token_ids"])
        padding_mask = np.asarray(x.get("padding_mask", np.ones_like(token_ids, dtype=bool)))
        unbatched = token_ids.ndim == 1
        token_ids = np.atleast_2d(token_ids)
        padding_mask = np.atleast_2d(padding_mask).astype(bool)
        dropped = list(self.tokenizer.stop_token_ids)
        if self.tokenizer.start_token_id is not None:
            dropped.append(self.tokenizer.start_token_id)
        keep = padding_mask & ~np.isin(token_ids, dropped)
        texts = [
            self.tokenizer.detokenize(row[mask]) for row, mask in zip(token_ids, keep, strict=True)
        ]
        return texts[0] if unbatched else texts

    # ----------------------------------------------------------------- internals
    def _tokenize_inputs(
        self, x: Any, add_generation_prompt: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray | None], bool]:
        """Token ids per example, the assistant-token mask of conversations, and whether x was
        a batch."""
        if isinstance(x, np.ndarray):
            x = x.item() if x.ndim == 0 else x.tolist()
        if isinstance(x, (str, bytes)):
            return [self.tokenizer.tokenize(x)], [None], False
        if _is_conversation(x):
            ids, mask = self._tokenize_conversation(x, add_generation_prompt)
            return [ids], [mask], False
        if not isinstance(x, (list, tuple)):
            raise TypeError(
                "Llama3CausalLMPreprocessor takes a string, a list of strings, a conversation "
                f"([{{'role': ..., 'content': ...}}, ...]) or a list of conversations; got {type(x).__name__}"
            )
        texts: list[np.ndarray] = []
        masks: list[np.ndarray | None] = []
        for item in x:
            if _is_conversation(item):
                ids, mask = self._tokenize_conversation(item, add_generation_prompt)
            elif isinstance(item, (str, bytes)):
                ids, mask = self.tokenizer.tokenize(item), None
            else:
                raise TypeError(
                    "each item of a batch must be a string or a conversation, "
                    f"got {type(item).__name__}"
                )
            texts.append(ids)
            masks.append(mask)
        return texts, masks, True

    def _tokenize_conversation(
        self, messages: Conversation, add_generation_prompt: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ids of the rendered conversation and a mask of the tokens of assistant turns."""
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt
        )
        ids, offsets = self.tokenizer.tokenize_with_offsets(text)
        mask = np.zeros(len(ids), dtype=bool)
        for start, end in self._assistant_spans(messages, text):
            # A token belongs to the turn when its characters overlap the turn's span.
            mask |= (offsets[:, 1] > start) & (offsets[:, 0] < end)
        return ids, mask

    def _assistant_spans(self, messages: Conversation, text: str) -> list[tuple[int, int]]:
        """Character spans of the assistant turns in the rendered ``text``.

        A turn's span runs from the end of the conversation before it, rendered with the
        generation prompt (so the assistant header is excluded), to the end of the conversation
        up to and including it: the content and the end-of-turn tokens, which is what the model
        must learn to write. Templates whose renderings are not prefixes of one another fall back
        to finding each assistant content in order.
        """
        spans = []
        search_from = 0
        for index, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            span = None
            try:
                before = self.tokenizer.apply_chat_template(
                    messages[:index], add_generation_prompt=True
                )
                through = self.tokenizer.apply_chat_template(
                    messages[: index + 1], add_generation_prompt=False
                )
                if text.startswith(through) and through.startswith(before):
                    span = (len(before), len(through))
            except (ValueError, TypeError):  # e.g. a template that needs a first message
                span = None
            if span is None:
                content = str(message.get("content") or "").strip()
                found = text.find(content, search_from) if content else -1
                if found < 0:
                    continue
                span = (found, found + len(content))
            spans.append(span)
            search_from = span[1]
        return spans

    def _pack(
        self,
        sequences: list[np.ndarray],
        loss_masks: list[np.ndarray | None] | None,
        length: int | None,
        add_start: bool,
        add_end: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start token + ids + end token, cut at the end (start and end kept) and right-padded
        to ``length`` (``None``: to the longest row)."""
        start_id = self.tokenizer.start_token_id
        end_id = self.tokenizer.end_token_id
        add_start = add_start and self.tokenizer.add_bos and start_id is not None
        add_end = add_end and end_id is not None
        rows: list[tuple[np.ndarray, np.ndarray]] = []
        for row, ids in enumerate(sequences):
            ids = np.asarray(ids, dtype=np.int32)
            chat_mask = None if loss_masks is None else loss_masks[row]
            weights = np.ones(len(ids), dtype=bool) if chat_mask is None else chat_mask
            # Never doubled: a text that already starts with BOS (or ends with EOS) keeps its own.
            # A rendered conversation ends as its chat template says, so no end token is added.
            prepend = add_start and not (len(ids) and ids[0] == start_id)
            append = add_end and chat_mask is None and not (len(ids) and ids[-1] == end_id)
            if length is not None:
                room = max(length - int(prepend) - int(append), 0)
                ids, weights = ids[:room], weights[:room]
            if prepend:
                ids = np.concatenate([[start_id], ids])
                weights = np.concatenate([[False], weights])
            if append:
                ids = np.concatenate([ids, [end_id]])
                weights = np.concatenate([weights, [True]])
            if length is not None:
                ids, weights = ids[:length], weights[:length]
            rows.append((ids.astype(np.int32), weights.astype(bool)))
        if length is None:
            length = max((len(ids) for ids, _ in rows), default=0)
        batch = len(rows)
        token_ids = np.full((batch, length), self.tokenizer.pad_token_id, dtype=np.int32)
        padding_mask = np.zeros((batch, length), dtype=bool)
        loss_mask = np.zeros((batch, length), dtype=bool)
        for row, (ids, weights) in enumerate(rows):
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = True
            loss_mask[row, : len(ids)] = weights
        return token_ids, padding_mask, loss_mask
