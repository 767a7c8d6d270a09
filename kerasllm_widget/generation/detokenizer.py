"""Token ids to text, one token at a time, without ever showing half a character.

Byte-level tokenizers (Llama 3, SmolLM2) often split one character over several tokens: an emoji
is 4 UTF-8 bytes and may come as 2 or 3 tokens. Decoding each token alone would show U+FFFD
replacement characters. We use the prefix/read-offset technique of text-generation-inference and
vLLM: decode a small window of recent ids, emit only what the window adds beyond the text already
emitted, and hold back while the window ends in an incomplete character (U+FFFD). The window
starts one emitted chunk back, so that decoders which look at context (SentencePiece's leading
space) see it, and it slides forward, so each token costs O(1) however long the text grows.

Why not `tokenizers.decoders.DecodeStream` (tokenizers 0.23): tried in its place, it fails two
of tests/test_detokenizer.py's UTF-8 cases. It holds back the whole token that starts a split
character, so the text before the character inside that token (the space of " \xf0\x9f")
waits for the character's last byte; and it has no end-of-stream flush, so a reply cut inside
a character loses its last bytes instead of showing U+FFFD as the full decode does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

    from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"
# How many ids of a prompt are kept as context for the first generated token.
_CONTEXT_IDS = 4


class _Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def _backend(tokenizer: Llama3Tokenizer | Tokenizer) -> _Decoder:
    # A Llama3Tokenizer exposes its Rust tokenizer as `.backend`; a bare `tokenizers.Tokenizer`
    # is used as is. Calling the Rust decode directly skips numpy conversions on the hot path.
    return getattr(tokenizer, "backend", tokenizer)


class IncrementalDetokenizer:
    """Streams text deltas as token ids arrive; the deltas concatenate to the full decode.

    Args:
        tokenizer: a `Llama3Tokenizer` (or a ``tokenizers.Tokenizer``).
        skip_special_tokens: drop special tokens (``<|eot_id|>``) from the text.
        context_ids: ids that come before the streamed ones (the prompt); they are not emitted,
            but give the first tokens their context (a SentencePiece leading space is kept).

    Example:
        >>> detok = IncrementalDetokenizer(tokenizer)  # doctest: +SKIP
        >>> [detok.push(i) for i in tokenizer("Hi 🐍")] + [detok.flush()]  # doctest: +SKIP
        ['Hi', ' ', '', '🐍', '']
    """

    def __init__(
        self,
        tokenizer: Llama3Tokenizer | Tokenizer,
        *,
        skip_special_tokens: bool = False,
        context_ids: Iterable[int] | None = None,
    ) -> None:
        self._decoder = _backend(tokenizer)
        self.skip_special_tokens = skip_special_tokens
        self._context = [int(i) for i in (context_ids or ())][-_CONTEXT_IDS:]
        self.reset()

    def reset(self) -> None:
        """Forgets every pushed id (the context ids are kept)."""
        # The window is ids[prefix_offset:]; ids[prefix_offset:read_offset] were emitted already
        # and are only there as context; `_emitted_past_prefix` counts characters past them that
        # were emitted while the window still ended mid-character.
        self._ids: list[int] = list(self._context)
        self._prefix_offset = 0
        self._read_offset = len(self._context)
        prefix_text = self._decode(self._ids) if self._ids else ""
        # A prompt that ends mid-character: its last character comes out whole with the stream.
        self._prefix_text = prefix_text.removesuffix(_REPLACEMENT)
        self._emitted_past_prefix = 0
        self._pushed = 0
        self._deltas: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self._decoder.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Adds one id; returns the text it completes ("" while a character is incomplete).

        Example:
            >>> detok.push(9906)  # doctest: +SKIP
            'Hello'
        """
        self._ids.append(int(token_id))
        self._pushed += 1
        text = self._decode(self._ids[self._prefix_offset :])
        complete = not text.endswith(_REPLACEMENT)
        # While the window ends mid-character, everything before that character is final already:
        # later bytes can only complete (or spoil) it. Byte-fallback decoders show an incomplete
        # character as one U+FFFD per byte, so every trailing U+FFFD is held back.
        stable_end = len(text) if complete else len(text.rstrip(_REPLACEMENT))
        start = len(self._prefix_text) + self._emitted_past_prefix
        delta = text[start:stable_end] if stable_end > start else ""
        if complete:
            # Slide the window: what was just read becomes the context of the next token.
            self._prefix_text = self._decode(self._ids[self._read_offset :])
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self._emitted_past_prefix = 0
            # Drop ids no window will look at again, so memory stays bounded too.
            if self._prefix_offset > 0:
                del self._ids[: self._prefix_offset]
                self._read_offset -= self._prefix_offset
                self._prefix_offset = 0
        else:
            self._emitted_past_prefix += len(delta)
        if delta:
            self._deltas.append(delta)
        return delta

    def push_many(self, token_ids: Iterable[int]) -> str:
        """Pushes several ids; returns their text delta joined.

        Example:
            >>> detok.push_many([9906, 1917])  # doctest: +SKIP
            'Hello world'
        """
        return "".join(self.push(token_id) for token_id in token_ids)

    def flush(self) -> str:
        """Emits what is held back at the end of the stream (an incomplete character decodes
        to U+FFFD, as the full decode does).

        Example:
            >>> detok.flush()  # doctest: +SKIP
            ''
        """
        if self._read_offset >= len(self._ids):
            return ""
        text = self._decode(self._ids[self._prefix_offset :])
        start = len(self._prefix_text) + self._emitted_past_prefix
        delta = text[start:]
        self._prefix_text = self._decode(self._ids[self._read_offset :])
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._emitted_past_prefix = 0
        if delta:
            self._deltas.append(delta)
        return delta

    @property
    def text(self) -> str:
        """Everything emitted so far.

        Example:
            >>> detok.text  # doctest: +SKIP
            'Hello world'
        """
        return "".join(self._deltas)

    @property
    def window_size(self) -> int:
        """How many ids the next decode will look at: stays small however long the stream."""
        return len(self._ids) - self._prefix_offset + 1

    @property
    def num_tokens(self) -> int:
        """How many ids were pushed since the start (or the last `reset`)."""
        return self._pushed
