"""`ChatBranches`: the branching part of `ChatState` ("change the course" of a reply).

A branch continues an assistant reply from its first ``token_index`` tokens (then, when given,
a chosen ``token_id``): the prompt is the conversation before the reply with the assistant's
header, followed by those ids, so the engine's kept cache (which holds the last request's
prompt and reply) reuses everything up to the branch point and computes only the new tokens.
The new reply becomes a sibling of the old one (`ChatTree`) and the visible path switches to it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from kerasllm_widget.chat.chat_tree import FORMAT, ChatTree, markdown
from kerasllm_widget.generation import settings
from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.generation.stopping import stop_token_ids_of

__all__ = ["ChatBranches"]


class ChatBranches:
    """Branch, list and switch siblings, export the tree; mixed into `ChatState`."""

    def token_ids(self, message_id: str) -> list[int] | None:
        """The token ids of the assistant reply ``message_id`` (None: not made by the model).

        Example:
            >>> chat.token_ids(chat.messages[-1]["id"])[:3]  # doctest: +SKIP
            [40, 1021, 264]
        """
        return self.tree.token_ids(message_id)

    def branches(self, message_id: str) -> dict[str, Any]:
        """The siblings of ``message_id`` (itself included) and which one is shown:
        ``{"index": shown, "messages": [{"id", "content"}, ...]}``.

        Example:
            >>> chat.branches(chat.messages[-1]["id"])["index"]  # doctest: +SKIP
            1
        """
        with self._lock:
            self.messages[:] = self.tree.with_ids(self.messages)
            return self.tree.siblings(self.messages, message_id)

    def sibling_counts(self) -> dict[str, tuple[int, int]]:
        """``{message id: (index, count)}`` for every message on the visible path that has
        siblings: which of them it is, and how many there are (the panel's ``‹ 2 / 3 ›``).

        Example:
            >>> chat.sibling_counts()  # doctest: +SKIP
            {'3f2a9c0e1b7d': (1, 2)}
        """
        with self._lock:
            return self.tree.shown_counts()

    def switch(self, message_id: str, index: int) -> list[dict[str, Any]]:
        """Shows sibling ``index`` of ``message_id``, followed by that sibling's own
        continuation; returns the new `messages`.

        Example:
            >>> chat.switch(chat.messages[1]["id"], 0)  # doctest: +SKIP
        """
        with self._lock:
            messages = self.tree.with_ids(self.messages)
            self.messages[:] = self.tree.switch(messages, message_id, index)
            return list(self.messages)

    def branch(
        self,
        message_id: str,
        token_index: int,
        token_id: int | None = None,
        *,
        text: str | None = None,
        cancel_event: threading.Event | None = None,
        **sampling: Any,
    ) -> Iterator[TokenEvent | DoneEvent]:
        """Continues the assistant reply ``message_id`` from its first ``token_index`` tokens
        and then ``token_id`` (None: the model picks) or the tokens of ``text`` (a continuation
        typed by the user), streamed like `stream` (the events carry the new tokens; the new
        message's ``content`` is the whole reply). The branch becomes a
        sibling of the reply and is shown. Nothing changes until the reply is done: a stream
        that fails or is closed early leaves `messages` and the tree as they were.

        Example:
            >>> reply = chat.messages[-1]["id"]  # doctest: +SKIP
            >>> events = list(chat.branch(reply, 5, token_id=1234, temperature=0))  # doctest: +SKIP
            >>> events = list(chat.branch(reply, 5, text=" Actually,"))  # doctest: +SKIP
        """
        messages, position, prefix = self._branch_point(
            message_id, token_index, token_id, text, sampling.get("stop_token_ids")
        )
        options = self._options(sampling)
        return self._branch_run(messages, position, prefix, cancel_event, options)

    def branch_prefix(
        self,
        message_id: str,
        token_index: int,
        token_id: int | None = None,
        *,
        text: str | None = None,
        stop_token_ids=None,
    ) -> list[int]:
        """The token ids a `branch` with these arguments starts from (the reply's first
        ``token_index`` ids, then ``token_id`` or the tokens of ``text``), checked as `branch`
        checks them.

        Example:
            >>> chat.branch_prefix(chat.messages[-1]["id"], 2, token_id=1234)  # doctest: +SKIP
            [40, 1021, 1234]
        """
        return self._branch_point(message_id, token_index, token_id, text, stop_token_ids)[2]

    def _branch_point(self, message_id, token_index, token_id, text, stop_token_ids):
        with self._lock:
            self.messages[:] = messages = self.tree.with_ids(self.messages)
            position = self.tree.position(messages, message_id)
            message_id = messages[position]["id"]  # a hidden sibling branches the shown one
            if messages[position]["role"] != "assistant":
                raise ValueError(f"Message {message_id!r} is not an assistant reply.")
            reply = self.tree.token_ids(message_id)
        if reply is None:
            raise ValueError(
                f"Message {message_id!r} has no token ids (it was not made by the model)."
            )
        if (
            not isinstance(token_index, int)
            or isinstance(token_index, bool)
            or not 0 <= token_index <= len(reply)
        ):
            raise IndexError(
                f"token_index={token_index!r} is not in this reply: use 0 to {len(reply)}."
            )
        prefix = [*reply[:token_index], *self._chosen_ids(token_id, text, stop_token_ids)]
        return messages, position, prefix

    def _chosen_ids(self, token_id: int | None, text: str | None, stop_token_ids) -> list[int]:
        """The ids a branch starts with after its prefix: ``token_id``, or ``text`` tokenized."""
        if token_id is not None and text is not None:
            raise ValueError(
                f"token_id={token_id!r} and text={text!r}: give one of them, or neither."
            )
        stops = stop_token_ids_of(self.model.tokenizer, stop_token_ids)
        if text is not None:
            if not isinstance(text, str) or not text:
                raise ValueError(f"text={text!r} is not allowed: type some text, or pass None.")
            ids = [int(t) for t in self.model.tokenizer.tokenize(text)]
            if any(t in stops for t in ids):
                raise ValueError(f"text={text!r} holds a token that ends the reply.")
            return ids
        if token_id is None:
            return []
        vocabulary = int(self.model.backbone.vocabulary_size)
        (token_id,) = settings.check_token_ids([token_id], vocabulary, "token_id")
        if token_id in stops:
            raise ValueError(f"token_id={token_id} ends the reply; there is nothing to branch.")
        return [token_id]

    def _branch_run(self, messages, position, prefix, cancel_event, options):
        prompt_ids = [*self.prompt_ids(messages[:position]), *prefix]
        tokenizer = self.model.tokenizer
        for event in self._turn_events(prompt_ids, cancel_event, options):
            if isinstance(event, DoneEvent):
                ids = [*prefix, *event.token_ids]
                if event.stop_reason == "stop_string":  # the text was cut inside the ids
                    content = tokenizer.detokenize(prefix) + event.reply
                else:
                    content = tokenizer.detokenize(ids)
                with self._lock:
                    if self.messages != messages:
                        raise RuntimeError("The chat changed while the branch was made.")
                    new = self.tree.message("assistant", content, ids)
                    self.messages[:] = self.tree.add_sibling(messages, position, new)
            yield event

    # ---- export ------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The whole conversation tree as JSON (every branch, the reply token ids).

        Example:
            >>> same = ChatState.from_json(model, chat.to_json())  # doctest: +SKIP
        """
        with self._lock:
            self.messages[:] = self.tree.with_ids(self.messages)
            return self.tree.to_json(self.messages, self.system_prompt)

    @classmethod
    def from_json(cls, model, text: str, **kwargs: Any):
        """A chat on ``model`` from `to_json`'s document (``kwargs`` as for the constructor).

        Example:
            >>> chat = ChatState.from_json(model, open("chat.json").read())  # doctest: +SKIP
        """
        import json

        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"Not a chat tree document (format {data.get('format')!r}).")
        chat = cls(model, data.get("system_prompt"), **kwargs)
        chat.tree, messages = ChatTree.from_dict(data)
        chat.messages[:] = messages
        return chat

    def to_markdown(self, title: str = "model") -> str:
        """The visible conversation as Markdown.

        Example:
            >>> print(chat.to_markdown())  # doctest: +SKIP
        """
        with self._lock:
            return markdown(self.messages, self.system_prompt, title)
