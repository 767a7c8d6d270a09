"""Special-token strings typed inside chat messages, tokenized as the plain text they are.

A user who types ``<|im_start|>system`` into a chat would otherwise write a real special token
into the prompt. `Llama3Tokenizer.chat_prompt_ids(..., escape_special_tokens=True)` finds where in
the rendered prompt such strings came from message content (`content_special_spans`) and encodes
just those stretches again with special tokens read as text (`escaped_ids`); the template's own
special tokens, and the ids of all other text, stay as they were.
"""

from __future__ import annotations

import bisect
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer

from kerasllm_widget.models.chat_template_errors import ChatTemplateError

__all__ = [
    "content_special_spans",
    "escaped_ids",
    "escaping_backend",
    "mark_special_strings",
    "restore_special_strings",
    "special_token_pattern",
]


def special_token_pattern(texts: Iterable[str]) -> re.Pattern[str] | None:
    """A regex matching any of the special-token strings ``texts`` (None when there are none).

    Example:
        >>> special_token_pattern(["<|im_start|>", "<|im_start|>x"]).findall("<|im_start|>xy")
        ['<|im_start|>x']
    """
    # Longest first, so that a special token that begins another one does not win.
    ordered = sorted(set(texts) - {""}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def escaping_backend(backend: Tokenizer) -> Tokenizer:
    """A copy of ``backend`` that reads special-token strings as text.

    A copy rather than toggling ``encode_special_tokens`` on ``backend``, which other threads (the
    token inspector) use at the same time. It takes 0.6 s for Llama 3's tokenizer.json, so the
    tokenizer builds it on first use.

    Example:
        >>> escaping = escaping_backend(tokenizer.backend)  # doctest: +SKIP
        >>> len(escaping.encode("<|eot_id|>", add_special_tokens=False).ids) > 1  # doctest: +SKIP
        True
    """
    copy = Tokenizer.from_str(backend.to_str())
    copy.encode_special_tokens = True
    return copy


def mark_special_strings(
    value: Any, pattern: re.Pattern[str], marker: str, found: list[str]
) -> Any:
    """``value`` (a string, or dicts and lists of them) with every special-token string replaced
    by ``marker`` + its index in ``found``: a placeholder no tokenizer knows, that survives the
    template as it is. The strings are appended to ``found``.

    Example:
        >>> found = []
        >>> mark_special_strings({"a": "x<s>"}, re.compile("<s>"), "@", found), found
        ({'a': 'x@0\\ue001'}, ['<s>'])
    """
    if isinstance(value, str):

        def mark(match: re.Match[str]) -> str:
            found.append(match.group(0))
            return f"{marker}{len(found) - 1}\ue001"

        return pattern.sub(mark, value)
    if isinstance(value, Mapping):
        return {k: mark_special_strings(v, pattern, marker, found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mark_special_strings(v, pattern, marker, found) for v in value]
    return value


def restore_special_strings(
    text: str, marker: str, found: list[str]
) -> tuple[str, list[tuple[int, int]]]:
    """The placeholders of `mark_special_strings` back to their special-token strings, with the
    ``[start, end)`` span of each in the restored text.

    Example:
        >>> restore_special_strings("x@0\\ue001y", "@", ["<s>"])
        ('x<s>y', [(1, 4)])
    """
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


def content_special_spans(
    render: Callable[[list[Any]], str],
    messages: Sequence[Mapping[str, Any]],
    text: str,
    pattern: re.Pattern[str],
) -> list[tuple[int, int]]:
    """Character spans in the rendered ``text`` of special-token strings that came from
    message content: the conversation is rendered again (``render(messages)``, the call that
    made ``text``) with each one replaced by a placeholder, so wherever the template puts (or
    trims) content, the spans are exact.

    Example:
        >>> render = lambda messages: "|".join(m["content"] for m in messages)
        >>> messages = [{"role": "user", "content": "a<s>b"}]
        >>> content_special_spans(render, messages, render(messages), re.compile("<s>"))
        [(1, 4)]
    """
    marker = f"\ue000{secrets.token_hex(4)}:"
    found: list[str] = []
    marked = [
        {**m, "content": mark_special_strings(m["content"], pattern, marker, found)}
        # What people typed (user, system); the model's own replies keep the special
        # tokens it produced.
        if isinstance(m, Mapping) and "content" in m and m.get("role") != "assistant"
        else m
        for m in messages
    ]
    if not found:
        return []
    restored, spans = restore_special_strings(render(marked), marker, found)
    if restored != text:
        raise ChatTemplateError(
            "escape_special_tokens: this chat template changes message content before "
            "writing it (it slices, measures or reorders it), so the special-token strings "
            "inside messages cannot be told apart from the template's own. Remove them from "
            "the messages or pass escape_special_tokens=False."
        )
    return spans


def escaped_ids(
    text: str,
    ids: list[int],
    offsets: Sequence[tuple[int, int]],
    spans: list[tuple[int, int]],
    special_token_ids: frozenset[int],
    escaping: Tokenizer,
) -> list[int]:
    """``ids`` (the plain encoding of ``text``, with its ``offsets``) with each stretch between
    two of the template's special tokens that holds an escaped span encoded again by
    ``escaping`` (an `escaping_backend`), special-token strings read as text. The tokenizer splits
    text at special tokens before anything else, so every other stretch keeps exactly its ids.

    Example:
        >>> escaped_ids(text, ids, offsets, spans, tokenizer.special_token_ids, escaping)  # doctest: +SKIP
    """
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
        if token_id in special_token_ids and not inside_a_span(*offsets[i])
    ]
    out: list[int] = []
    previous = -1
    for boundary in [*boundaries, len(ids)]:
        start = offsets[previous][1] if previous >= 0 else 0
        end = offsets[boundary][0] if boundary < len(ids) else len(text)
        if meets_a_span(start, end):
            out += escaping.encode(text[start:end], add_special_tokens=False).ids
        else:
            out += ids[previous + 1 : boundary]
        if boundary < len(ids):
            out.append(ids[boundary])
        previous = boundary
    return out
