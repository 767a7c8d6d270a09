"""The key/value cache of a chat as the engine holds it: what each slot holds and where it came from.

A chat "remembers" through its cache: every token it has read or written keeps its keys and
values there, one slot per position. `kv_cache` describes that cache for a `ChatState` (or a
`ChatWidget`): per slot the token, which message it belongs to (the template's headers and
separators flagged), and whether the last request REUSED it from the cache kept after the turn
before, or had to compute it (prefill for the prompt, decode for the reply). Which slots were
reused comes from the engine's own record (``engine.last_request``), never re-derived. Messages
dropped because the context filled are listed; the system prompt is never among them.

Example:
    >>> from kerasllm_widget import inspect
    >>> cache = inspect.kv_cache(chat.chat_state)  # doctest: +SKIP
    >>> cache.reused_tokens, cache.used, cache.capacity, cache.bytes_per_token  # doctest: +SKIP
    (41, 97, 512, 92160)
    >>> print(cache.summary())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.inspect._sources import tokenizer_of
from kerasllm_widget.inspect.pieces import pieces

__all__ = ["KvCache", "kv_cache", "REUSED", "PREFILLED", "GENERATED", "SOURCES"]

# Where a slot's keys and values came from in the last request (the ``source`` codes).
REUSED, PREFILLED, GENERATED = 0, 1, 2
SOURCES = ("reused", "prefilled", "generated")
STALE = -1  # a slot of a message no longer in the conversation (edited, undone, reset)


@dataclass
class KvCache:
    """One chat's key/value cache, slot by slot (``N`` slots in use).

    - ``token_ids`` ``[N]``, ``pieces``: what each slot holds;
    - ``message`` ``[N]``: index into ``messages`` (``-1``: a message no longer in the chat);
      ``template`` ``[N]``: a header or separator the chat template added, not the message's text;
    - ``source`` ``[N]``: `REUSED` from the cache kept after the turn before, `PREFILLED` (the
      prompt's new tokens) or `GENERATED` (the reply), as the engine recorded it;
    - ``messages``: ``{"role", "turn", "label", "content"}`` for each message in the cache
      (``role`` "template" for what a template puts before the first message);
    - ``dropped``: the messages dropped from the prompt because the context filled.

    Example:
        >>> cache.pieces[:3], cache.source[:3]  # doctest: +SKIP
        (['<|im_start|>', 'system', '↵'], array([0, 0, 0], dtype=uint8))
    """

    token_ids: np.ndarray  # [N] int32
    pieces: list[str]
    message: np.ndarray  # [N] int32
    template: np.ndarray  # [N] bool
    source: np.ndarray  # [N] uint8
    messages: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    capacity: int  # slots allocated
    bytes_per_token: int  # layers x 2 x kv_heads x head_dim x dtype size
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    dtype: str = ""
    running: bool = False  # a reply is being made: its slots are not all in yet
    context_length: int = 0  # the most tokens the chat may use
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def used(self) -> int:
        """Slots holding a token."""
        return int(self.token_ids.size)

    @property
    def reused_tokens(self) -> int:
        """Slots the last request took from the kept cache instead of computing them."""
        return int(np.count_nonzero(self.source == REUSED))

    @property
    def total_bytes(self) -> int:
        """Bytes the cache takes (every allocated slot)."""
        return self.bytes_per_token * self.capacity

    @property
    def used_bytes(self) -> int:
        """Bytes of the slots in use."""
        return self.bytes_per_token * self.used

    def to_dict(self) -> dict[str, Any]:
        """The description without its arrays (those travel as binary buffers)."""
        return {
            "pieces": self.pieces,
            "messages": self.messages,
            "dropped": self.dropped,
            "capacity": self.capacity,
            "used": self.used,
            "bytes_per_token": self.bytes_per_token,
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "dtype": self.dtype,
            "running": self.running,
            "context_length": self.context_length,
            "counts": self.counts,
        }

    def summary(self) -> str:
        """A few lines of text: the totals, then one line per message with its slots.

        Example:
            >>> print(cache.summary())  # doctest: +SKIP
            97 of 512 slots used; 41 reused, 14 prefilled, 42 generated ...
        """
        counts = ", ".join(f"{self.counts.get(name, 0)} {name}" for name in SOURCES)
        lines = [
            f"{self.used} of {self.capacity} slots used; {counts}",
            f"{_size(self.bytes_per_token)} per token = {self.layers} layers x 2 (keys, values) x "
            f"{self.kv_heads} kv heads x {self.head_dim} x {np.dtype(self.dtype).itemsize} bytes "
            f"({self.dtype}); {_size(self.used_bytes)} used of {_size(self.total_bytes)}",
        ]
        for index, message in enumerate(self.messages):
            slots = np.flatnonzero(self.message == index)
            if slots.size == 0:
                continue
            sources = [SOURCES[s] for s in np.unique(self.source[slots])]
            lines.append(
                f"  slots {slots[0]:>4}-{slots[-1]:<4} {message['label']:<12} "
                f"{'/'.join(sources):<20} {_preview(message['content'])}"
            )
        for message in self.dropped:
            lines.append(f"  dropped      {message['label']:<12} {_preview(message['content'])}")
        return "\n".join(lines)


def kv_cache(chat: Any) -> KvCache:
    """The key/value cache of ``chat`` (a `ChatState`, or a `ChatWidget`) after its last request.

    While a reply is being made the description holds its prompt (the reply's slots come in as it
    streams; ``running`` is True). Before the first request the cache is empty.

    Example:
        >>> cache = kv_cache(chat_state)  # doctest: +SKIP
        >>> cache.counts  # doctest: +SKIP
        {'reused': 41, 'prefilled': 14, 'generated': 42}
    """
    state = getattr(chat, "chat_state", chat)
    if state is None or not hasattr(state, "prompt_ids"):
        raise ValueError(
            f"chat={type(chat).__name__}: needs a ChatState or a ChatWidget with a loaded model"
        )
    record = getattr(engine_for(state.model), "last_request", None)
    if record is None or record.batch != 1:
        return _empty(state, record)
    running = record.held_ids is None
    prompt = list(record.prompt_ids)
    held = prompt if running else list(record.held_ids)
    messages, spans = _message_spans(state, prompt)
    message = np.full(len(held), STALE, np.int32)
    for index, (start, end) in enumerate(spans):
        message[start:end] = index
    if _answers_this_chat(state, prompt, running):
        # The spans run on from slot 0, so what follows the last is the reply's header and text.
        message[spans[-1][1] :] = _reply_index(state, messages, running)
    source = np.full(len(held), GENERATED, np.uint8)
    source[: len(prompt)] = PREFILLED
    source[: record.reused_tokens] = REUSED
    tokenizer = tokenizer_of(state.model)
    ids = np.asarray(held, np.int32)
    return KvCache(
        token_ids=ids,
        pieces=pieces(tokenizer, held),
        message=message,
        template=_template_flags(tokenizer, ids, message, source, messages),
        source=source,
        messages=messages,
        dropped=_dropped(state),
        capacity=record.capacity,
        bytes_per_token=record.bytes_per_token,
        layers=record.layers,
        kv_heads=record.kv_heads,
        head_dim=record.head_dim,
        dtype=record.dtype,
        running=running,
        context_length=int(getattr(state, "context_length", 0) or 0),
        counts={name: int(np.count_nonzero(source == code)) for code, name in enumerate(SOURCES)},
    )


# ---- which message each slot belongs to ---------------------------------------------------------


def _labelled(role: str, turn: int, content: str) -> dict[str, Any]:
    label = role if role in ("system", "template") else f"{role} {turn}"
    return {"role": role, "turn": turn, "label": label, "content": content}


def _dropped_turns(state: Any) -> int:
    return sum(1 for m in getattr(state, "dropped_messages", []) if m["role"] == "user")


def _dropped(state: Any) -> list[dict[str, Any]]:
    turn, out = 0, []
    for m in getattr(state, "dropped_messages", []):
        turn += m["role"] == "user"
        out.append(_labelled(m["role"], max(turn, 1), m["content"]))
    return out


def _message_spans(state: Any, prompt: list[int]) -> tuple[list[dict], list[tuple[int, int]]]:
    """The chat's messages (system or template head first) and the slots of ``prompt`` each one
    takes: rendering the conversation one message longer at a time, the tokens each rendering
    shares with the prompt beyond the one before. Messages that no longer match the prompt (the
    chat changed since the request) take no slots."""
    system = getattr(state, "system_prompt", None)
    head = _labelled("system" if system else "template", 0, system or "")
    messages, spans = [head], []
    turn = _dropped_turns(state)
    previous = _shared(_ids_or_empty(state, []), prompt)
    spans.append((0, previous))
    history = list(state.messages)
    for count, m in enumerate(history, start=1):
        turn += m["role"] == "user"
        messages.append(_labelled(m["role"], max(turn, 1), m["content"]))
        rendered = _ids_or_empty(state, history[:count])
        shared = _shared(rendered, prompt)
        if shared < len(rendered):  # this message is not (or not all) in the prompt
            spans.append((previous, previous))
            break
        spans.append((previous, shared))
        previous = shared
    messages = messages[: len(spans)]
    return messages, spans


def _ids_or_empty(state: Any, messages: list) -> list[int]:
    if not messages and not getattr(state, "system_prompt", None):
        try:  # some templates cannot render an empty conversation
            return list(state.prompt_ids([], add_generation_prompt=False))
        except Exception:
            return []
    return list(state.prompt_ids(messages, add_generation_prompt=False))


def _shared(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0]) if mismatch.size else n


def _answers_this_chat(state: Any, prompt: list[int], running: bool) -> bool:
    """Whether the last request answered this chat as it is now (another chat on the same model,
    an edit or a reset since makes the cache hold someone else's conversation)."""
    asked = list(state.messages)
    if not running and asked and asked[-1]["role"] == "assistant":
        asked = asked[:-1]
    if not asked:
        return False
    return list(state.prompt_ids(asked)) == prompt


def _reply_index(state: Any, messages: list[dict], running: bool) -> int:
    """The message the last request's reply is: the chat's last message when it is the reply,
    else a new entry (a reply still being made)."""
    if not running and state.messages and state.messages[-1]["role"] == "assistant":
        last = len(state.messages)  # the head is messages[0]
        if last < len(messages):
            return last
        messages.append(_labelled("assistant", messages[-1]["turn"], state.messages[-1]["content"]))
        return len(messages) - 1
    turn = max(1, _dropped_turns(state) + sum(m["role"] == "user" for m in state.messages))
    messages.append(_labelled("assistant", turn, ""))
    return len(messages) - 1


def _template_flags(
    tokenizer: Any, ids: np.ndarray, message: np.ndarray, source: np.ndarray, messages: list
) -> np.ndarray:
    """Which slots are the template's (special tokens, role headers, separators) rather than the
    message's text: within each message's slots, those whose bytes fall outside its content."""
    flags = np.ones(ids.size, bool)
    for index, entry in enumerate(messages):
        slots = np.flatnonzero(message == index)
        content = str(entry["content"]).strip().encode("utf-8")
        if slots.size == 0 or not content:
            continue
        chunks = [tokenizer.token_bytes(int(ids[s])) for s in slots]
        ends = np.cumsum([len(c) for c in chunks])
        found = b"".join(chunks).find(content)
        if found < 0:  # a reply whose text is not its tokens' bytes: what was generated is
            special = np.array([int(ids[s]) in tokenizer.special_token_ids for s in slots])
            inside = (source[slots] == GENERATED) & ~special
        else:
            starts = ends - np.array([len(c) for c in chunks])
            inside = (ends > found) & (starts < found + len(content))
        flags[slots] = ~inside
    return flags


def _empty(state: Any, record: Any) -> KvCache:
    head = _labelled("system" if state.system_prompt else "template", 0, state.system_prompt or "")
    return KvCache(
        token_ids=np.zeros(0, np.int32),
        pieces=[],
        message=np.zeros(0, np.int32),
        template=np.zeros(0, bool),
        source=np.zeros(0, np.uint8),
        messages=[head],
        dropped=_dropped(state),
        capacity=0 if record is None else record.capacity,
        bytes_per_token=0 if record is None else record.bytes_per_token,
        layers=0 if record is None else record.layers,
        kv_heads=0 if record is None else record.kv_heads,
        head_dim=0 if record is None else record.head_dim,
        dtype="float32" if record is None else record.dtype,
        context_length=int(getattr(state, "context_length", 0) or 0),
        counts=dict.fromkeys(SOURCES, 0),
    )


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def _preview(text: str, width: int = 40) -> str:
    text = str(text).replace("\n", " ")
    return repr(text if len(text) <= width else text[: width - 1] + "…")
