"""The token sequence an inspector looks at: a text, or a chat's whole conversation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from kerasllm_widget.inspect._sources import tokenizer_of

# Roles of tokens, for colouring: chat template tokens around the turns are "template".
TEMPLATE = "template"
TEXT = "text"


@dataclass
class InspectedSequence:
    """Token ids with their readable pieces and the role each token belongs to."""

    ids: np.ndarray  # [T] int32
    pieces: list[str]
    roles: list[str]
    text: str
    messages: list[dict] = field(default_factory=list)

    @property
    def sequence_id(self) -> str:
        """Names this exact token sequence, so a view can drop answers about an older one."""
        return hashlib.sha1(np.ascontiguousarray(self.ids, np.int32).tobytes()).hexdigest()[:16]

    def __len__(self) -> int:
        return int(self.ids.size)


def _with_start_token(tokenizer, pieces: list[dict]) -> list[dict]:
    start = tokenizer.start_token_id
    if tokenizer.add_bos and start is not None and (not pieces or pieces[0]["id"] != start):
        return [
            {"id": int(start), "piece": tokenizer.id_to_token(int(start)), "start": 0, "end": 0}
        ] + pieces
    return pieces


def text_sequence(model, text: str) -> InspectedSequence:
    """A text as the model reads it for generation (with the start token when it wants one).

    Example:
        >>> text_sequence(model, "The cat sat").pieces  # doctest: +SKIP
        ['<|begin_of_text|>', 'The', '␣cat', '␣sat']
    """
    tokenizer = tokenizer_of(model)
    pieces = _with_start_token(tokenizer, tokenizer.tokenize_pieces(text))
    ids = np.asarray([p["id"] for p in pieces], np.int32)
    return InspectedSequence(ids, [p["piece"] for p in pieces], [TEXT] * len(pieces), text)


def conversation_sequence(chat_state) -> InspectedSequence:
    """A chat's conversation rendered with its template, every token tagged with its turn's role
    (``"template"`` for the headers and separators the template adds).

    With no turns yet it is the prompt the next reply would read (system prompt and header).

    Example:
        >>> conversation_sequence(chat.chat_state).roles[:3]  # doctest: +SKIP
        ['template', 'template', 'system']
    """
    tokenizer = tokenizer_of(chat_state.model)
    messages = [{"role": m["role"], "content": m["content"]} for m in chat_state.messages]
    system = getattr(chat_state, "system_prompt", None)
    turns = ([{"role": "system", "content": system}] if system else []) + messages
    text = chat_state.format(add_generation_prompt=not messages)
    # Each turn's content is found in the rendered text in order; tokens starting inside it take
    # its role. Templates may trim content, so a turn that is not found is simply not coloured.
    spans: list[tuple[int, int, str]] = []
    search_from = 0
    for turn in turns:
        content = str(turn["content"]).strip()
        if not content:
            continue
        found = text.find(content, search_from)
        if found < 0:
            continue
        spans.append((found, found + len(content), turn["role"]))
        search_from = found + len(content)
    pieces = _with_start_token(tokenizer, tokenizer.tokenize_pieces(text))
    roles = []
    for p in pieces:
        role = TEMPLATE
        for start, end, span_role in spans:
            if start <= p["start"] < end or (p["start"] < start < p["end"]):
                role = span_role
                break
        roles.append(role)
    ids = np.asarray([p["id"] for p in pieces], np.int32)
    return InspectedSequence(ids, [p["piece"] for p in pieces], roles, text, messages)
