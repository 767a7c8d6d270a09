"""Stop rules that need text: stop strings that may span several tokens, never emitted.

Stop *token ids* are checked on the device inside the decode loop (engine.py); a stop string
can only be seen once tokens are text, so the text is held back while its end could still be
the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kerasllm_widget.generation.settings import GenerationSettingError, check_token_ids

__all__ = ["AUTO", "StopStringMatcher", "requested_stop_token_ids", "stop_token_ids_of"]

AUTO = "auto"  # keras_hub's default for ``stop_token_ids``: the checkpoint's own stop tokens


def stop_token_ids_of(tokenizer, extra: Sequence[int] | None = None) -> list[int]:
    """The stop ids a request carries: the tokenizer's (its stop ids and end token) and
    ``extra``, sorted, each once. The engine sizes its compiled programs by how many there are.

    Example:
        >>> stop_token_ids_of(None, [7, 3, 7])
        [3, 7]
    """
    ids = list(getattr(tokenizer, "stop_token_ids", ()) or ()) if tokenizer is not None else []
    end = getattr(tokenizer, "end_token_id", None) if tokenizer is not None else None
    if end is not None:
        ids.append(end)
    return sorted({int(i) for i in [*ids, *(extra or ())]})


def requested_stop_token_ids(
    tokenizer, stop_token_ids: Any = AUTO, vocabulary_size: int = 2**31 - 1
) -> list[int]:
    """``stop_token_ids`` as keras_hub's ``generate`` reads it: ``"auto"`` the checkpoint's stop
    ids (its end token and ``generation_config.json``'s), ``None`` nothing (generate to the
    length limit), a sequence of ids exactly those (replacing the checkpoint's).

    Example:
        >>> requested_stop_token_ids(None, None), requested_stop_token_ids(None, (7, 3), 32)
        ([], [3, 7])
    """
    if isinstance(stop_token_ids, str):
        if stop_token_ids != AUTO:
            raise GenerationSettingError(
                "stop_token_ids",
                stop_token_ids,
                "use 'auto' (the checkpoint's stop tokens), None (no stop token) or a list of "
                "token ids",
            )
        return stop_token_ids_of(tokenizer)
    if stop_token_ids is None:
        return []
    if isinstance(stop_token_ids, (int, np.integer)):
        stop_token_ids = [stop_token_ids]
    return sorted(set(check_token_ids(stop_token_ids, vocabulary_size, "stop_token_ids")))


class StopStringMatcher:
    """Feeds text deltas in; gives back the part that is safe to show, and says when a stop
    string appeared (the text before it is the reply; the stop string itself is never shown).

    Example:
        >>> matcher = StopStringMatcher(["\\nUser:"])
        >>> matcher.push("Hi!\\nUs"), matcher.stopped
        ('Hi!', False)
        >>> matcher.push("er: next"), matcher.stopped
        ('', True)
        >>> matcher.text
        'Hi!'
    """

    def __init__(self, stop_strings: Iterable[str] = ()):
        self.stop_strings = [s for s in dict.fromkeys(stop_strings) if s]
        self._longest = max((len(s) for s in self.stop_strings), default=0)
        self._text = ""  # everything pushed
        self._emitted = 0  # characters of _text already handed out
        self.stopped = False

    @property
    def text(self) -> str:
        """The reply: what was handed out plus what `flush` will hand out."""
        return self._text[: self._end()] if self.stopped else self._text

    @property
    def holding(self) -> bool:
        """Whether some text is held back (it may still turn into a stop string)."""
        return not self.stopped and self._emitted < len(self._text)

    def _end(self) -> int:
        return self._stop_at if self.stopped else len(self._text)

    def push(self, delta: str) -> str:
        """Adds text; returns what can be shown now."""
        if self.stopped or not delta:
            return ""
        self._text += delta
        if not self.stop_strings:
            out, self._emitted = self._text[self._emitted :], len(self._text)
            return out
        # A stop string can only end inside the new text; start the search far enough back.
        search_from = max(0, len(self._text) - len(delta) - self._longest + 1)
        found = [i for i in (self._text.find(s, search_from) for s in self.stop_strings) if i >= 0]
        if found:
            self.stopped = True
            self._stop_at = max(min(found), self._emitted)
            out = self._text[self._emitted : self._stop_at]
            self._emitted = self._stop_at
            return out
        safe = len(self._text) - self._held_back()
        out = self._text[self._emitted : safe] if safe > self._emitted else ""
        self._emitted = max(self._emitted, safe)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        text = self._text
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self.stop_strings):
                return size
        return 0

    def flush(self) -> str:
        """At the end of the stream: the held-back tail (it never became a stop string)."""
        if self.stopped:
            return ""
        out, self._emitted = self._text[self._emitted :], len(self._text)
        return out
