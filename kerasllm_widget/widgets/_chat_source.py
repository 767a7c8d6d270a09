"""Reading the conversation of a ChatWidget or ChatState for the inspectors, through public names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kerasllm_widget.widgets.inspected_sequence import (
    InspectedSequence,
    conversation_sequence,
    text_sequence,
)


def chat_state_of(chat: Any):
    """The `ChatState` of a ChatWidget (None while its model loads), or a ChatState itself."""
    if hasattr(chat, "messages") and hasattr(chat, "format"):
        return chat
    return getattr(chat, "chat_state", None)


class ChatSource:
    """The model and the token sequences of a chat, or of a fixed text when there is no chat."""

    def __init__(self, model: Any = None, chat: Any = None, text: Callable[[], str] = lambda: ""):
        if model is None and chat is None:
            raise TypeError("pass a model, a chat (ChatWidget or ChatState), or both")
        self._model = model
        self.chat = chat
        self._text = text

    def model(self):
        if self._model is not None:
            return self._model
        state = chat_state_of(self.chat)
        return None if state is None else state.model

    def sequence(self, text: str | None) -> InspectedSequence:
        """``text`` if given; else the chat's conversation, or the widget's own text."""
        model = self.model()
        if model is None:
            return InspectedSequence(np.zeros(0, np.int32), [], [], "")
        if text is not None:
            return text_sequence(model, text)
        state = chat_state_of(self.chat) if self.chat is not None else None
        if state is not None:
            return conversation_sequence(state)
        return text_sequence(model, self._text())

    def prompt_ids(self, text: str | None) -> np.ndarray:
        """What a step-mode reply continues: the chat's next-reply prompt, or the text."""
        state = chat_state_of(self.chat) if self.chat is not None else None
        if text is None and state is not None:
            return text_sequence(self.model(), state.prompt).ids
        return self.sequence(text).ids

    def watch(self, callback: Callable[[], None]) -> None:
        """Calls ``callback()`` whenever the chat's conversation changes (a ChatWidget only)."""
        if self.chat is not None and hasattr(self.chat, "observe"):

            def changed(change: dict) -> None:
                entries = change["new"] or []
                if not any(e.get("status") == "streaming" for e in entries):
                    callback()

            self.chat.observe(changed, names=["transcript"])
