"""`ChatTree`: the branches of a `ChatState`'s conversation, beside its visible path.

`ChatState.messages` stays the path the model reads and the panel shows (plain ``{"id", "role",
"content"}`` dicts). The tree keeps what that list cannot: the token ids of each reply (a branch
starts from a token index), and, for every message that was branched, its siblings with the
messages that followed each of them. The shown sibling's continuation is the live one in
``messages``; the hidden ones are kept here, so switching swaps a tail of the list.
All methods are pure data: `ChatState` calls them under its lock and commits the result.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

__all__ = ["FORMAT", "ChatTree"]

Message = dict[str, Any]

FORMAT = "kerasllm-widget.chat-tree/1"


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class ChatTree:
    """Message ids, reply token ids and sibling groups of one chat.

    Example:
        >>> tree = ChatTree()
        >>> reply = tree.message("assistant", "Hi", token_ids=[5, 6])
        >>> tree.token_ids(reply["id"])
        [5, 6]
    """

    def __init__(self):
        self.reply_ids: dict[str, list[int]] = {}
        # group id -> {"ids": sibling ids in order, "shown": index, "tails": {hidden id: tail}}
        self.groups: dict[str, dict[str, Any]] = {}
        self.group_of: dict[str, str] = {}

    # ---- messages ----------------------------------------------------------------------------
    def message(self, role: str, content: str, token_ids: list[int] | None = None) -> Message:
        """A new message with a fresh id (an assistant's remembers its reply's token ids)."""
        message = {"id": new_id(), "role": role, "content": content}
        if token_ids is not None:
            self.reply_ids[message["id"]] = [int(t) for t in token_ids]
        return message

    @staticmethod
    def with_ids(messages: list[Message]) -> list[Message]:
        """``messages`` where any without an id (set from outside) is a copy with one."""
        return [m if m.get("id") else {**m, "id": new_id()} for m in messages]

    def token_ids(self, message_id: str) -> list[int] | None:
        """The token ids of the reply ``message_id`` (None when unknown)."""
        ids = self.reply_ids.get(message_id)
        return None if ids is None else list(ids)

    def position(self, messages: list[Message], message_id: str) -> int:
        """Where ``message_id`` (or, for a hidden sibling, the shown one) is in ``messages``."""
        group = self.groups.get(self.group_of.get(message_id, ""))
        shown = group["ids"][group["shown"]] if group else message_id
        for index, message in enumerate(messages):
            if message.get("id") == shown:
                return index
        raise KeyError(f"message_id={message_id!r} is not a message on this chat's visible path.")

    # ---- siblings ----------------------------------------------------------------------------
    def siblings(self, messages: list[Message], message_id: str) -> dict[str, Any]:
        """``{"index", "messages": [{"id", "content"}, ...]}`` of ``message_id``'s siblings."""
        position = self.position(messages, message_id)
        visible = messages[position]
        group = self.groups.get(self.group_of.get(visible["id"], ""))
        if group is None:
            return {"index": 0, "messages": [{"id": visible["id"], "content": visible["content"]}]}
        rows = []
        for index, sibling in enumerate(group["ids"]):
            message = visible if index == group["shown"] else group["tails"][sibling][0]
            rows.append({"id": message["id"], "content": message["content"]})
        return {"index": group["shown"], "messages": rows}

    def shown_counts(self) -> dict[str, tuple[int, int]]:
        """``{shown id: (index, count)}`` of every sibling group."""
        return {g["ids"][g["shown"]]: (g["shown"], len(g["ids"])) for g in self.groups.values()}

    def add_sibling(self, messages: list[Message], position: int, new: Message) -> list[Message]:
        """Makes ``new`` a sibling of ``messages[position]`` and shows it; returns the new path
        (the old message's continuation is kept hidden)."""
        old = messages[position]
        key = self.group_of.get(old["id"])
        group = self.groups.get(key) if key else None
        if group is None:
            key = old["id"]
            group = self.groups[key] = {"ids": [old["id"]], "shown": 0, "tails": {}}
            self.group_of[old["id"]] = key
        group["tails"][old["id"]] = list(messages[position:])
        group["ids"].append(new["id"])
        group["shown"] = len(group["ids"]) - 1
        group["tails"].pop(new["id"], None)
        self.group_of[new["id"]] = key
        return [*messages[:position], new]

    def answer(
        self, before: list[Message], at: int, new: list[Message], drop: int = 0
    ) -> list[Message]:
        """The path after a turn answered at ``at``: ``before[:at]`` then ``new``. When ``new``
        replaces a message (an edited question, a regenerated reply), its first message becomes a
        sibling of ``before[at]``, whose continuation stays reachable by `switch`; with nothing
        new (an empty regenerated reply) ``before[at:]`` is forgotten. The first ``drop``
        messages (turns the context outgrew) are forgotten too.

        Example:
            >>> tree = ChatTree()
            >>> old = [tree.message("user", "Hi"), tree.message("assistant", "Yo", [1])]
            >>> new = tree.message("assistant", "Hello", [2])
            >>> [m["content"] for m in tree.answer(old, 1, [new])]
            ['Hi', 'Hello']
            >>> len(tree.groups)
            1
        """
        if new and at < len(before):
            path = [*self.add_sibling(before, at, new[0]), *new[1:]]
        else:
            self.forget(before[at:])
            path = [*before[:at], *new]
        self.forget(path[:drop])
        return path[drop:]

    def forget(self, messages: list[Message]) -> None:
        """Drops ``messages`` (cut from the visible path) from the tree, with every branch that
        hangs from them: their hidden siblings and those siblings' continuations. What the
        visible path no longer reaches is gone, so no sibling group ever points at a message
        that is not there.

        Example:
            >>> tree = ChatTree()
            >>> reply = tree.message("assistant", "Yo", [1])
            >>> tree.forget([reply]); tree.token_ids(reply["id"]) is None
            True
        """
        for message in messages:
            message_id = message.get("id")
            self.reply_ids.pop(message_id, None)
            group = self.groups.pop(self.group_of.get(message_id, ""), None)
            if group is None:
                continue
            for sibling in group["ids"]:
                self.group_of.pop(sibling, None)
            for tail in group["tails"].values():
                self.forget(tail)

    def switch(self, messages: list[Message], message_id: str, index: int) -> list[Message]:
        """The path with sibling ``index`` of ``message_id`` shown, followed by its own
        continuation."""
        position = self.position(messages, message_id)
        group = self.groups.get(self.group_of.get(messages[position]["id"], ""))
        count = len(group["ids"]) if group else 1
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            raise IndexError(
                f"index={index!r} is not a sibling of this message: use 0 to {count - 1}."
            )
        if group is None or index == group["shown"]:
            return list(messages)
        group["tails"][group["ids"][group["shown"]]] = list(messages[position:])
        tail = group["tails"].pop(group["ids"][index])
        group["shown"] = index
        return [*messages[:position], *tail]

    # ---- export ------------------------------------------------------------------------------
    def to_dict(self, messages: list[Message], system_prompt: str | None) -> dict[str, Any]:
        """The whole tree (the visible path, every hidden branch, the reply token ids)."""
        return {
            "format": FORMAT,
            "system_prompt": system_prompt,
            "messages": [dict(m) for m in messages],
            "token_ids": {k: list(v) for k, v in self.reply_ids.items()},
            "branches": [
                {
                    "ids": list(g["ids"]),
                    "shown": g["shown"],
                    "tails": {k: [dict(m) for m in t] for k, t in g["tails"].items()},
                }
                for g in self.groups.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> tuple[ChatTree, list[Message]]:
        """The tree and the visible path of a `to_dict` document."""
        if data.get("format") != FORMAT:
            raise ValueError(f"Not a chat tree document (format {data.get('format')!r}).")
        tree = cls()
        tree.reply_ids = {k: [int(t) for t in v] for k, v in data.get("token_ids", {}).items()}
        for group in data.get("branches", []):
            key = group["ids"][0]
            tree.groups[key] = {
                "ids": list(group["ids"]),
                "shown": int(group["shown"]),
                "tails": {k: [dict(m) for m in t] for k, t in group["tails"].items()},
            }
            tree.group_of.update(dict.fromkeys(group["ids"], key))
        return tree, [dict(m) for m in data["messages"]]

    def to_json(self, messages: list[Message], system_prompt: str | None) -> str:
        return json.dumps(self.to_dict(messages, system_prompt), indent=2) + "\n"


def markdown(messages: list[Message], system_prompt: str | None, title: str = "model") -> str:
    """The visible path as Markdown (as the panel's export writes it, js/chat/export.ts).

    Example:
        >>> print(markdown([{"role": "user", "content": "Hi"}], None), end="")
        # Chat with model
        <BLANKLINE>
        ## User
        <BLANKLINE>
        Hi
    """
    lines = [f"# Chat with {title}", ""]
    if system_prompt:
        quoted = "\n".join(f"> {line}" if line else ">" for line in system_prompt.split("\n"))
        lines += ["**System prompt**", "", quoted, ""]
    for message in messages:
        lines += ["## User" if message["role"] == "user" else "## Assistant", ""]
        if message["content"]:
            lines += [message["content"], ""]
    return "\n".join(lines).rstrip() + "\n"
