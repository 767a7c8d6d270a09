"""`ChatTranscript`: the entries of a `ChatWidget`'s ``transcript`` trait, and the reply streaming
into them.

An entry is ``{id, role, content, status, request_id}`` (plus ``stop_reason``, ``notice``,
``error`` and ``stats`` once a reply ends); ``status`` is one of ``queued``, ``sent`` (user
messages), ``streaming``, ``done``, ``cancelled`` and ``error`` (replies). Once ChatState took
an entry's turn, the entry has the id of its ChatState message, ``state_id``, and, when that
message has siblings in ChatState's tree (a branch, a regenerated reply, an edited question),
``siblings: [index, count]``; switching between siblings shows the ChatState's path again from
there (`show_path`), with the entries the panel showed before where it has them. The transcript is what
the panel shows. The conversation the model reads is the `ChatState`'s ``messages``, which only
ChatState edits; `chat_state_index` is the one place that says which of its messages a
transcript entry stands for, so that a regenerate or an edit asks ChatState for the right one.

The widget and its replies (`ChatReplies`) say when the transcript changes (on which thread,
inside which state message); this class says what the entries become. Its methods take the
widget's lock themselves. The ``status`` trait (the status line) is written here too, so that a
finished reply and the status that says so reach the views in one state message (`one_update`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from kerasllm_widget.widgets.envelope import new_id

Entry = dict[str, Any]

# Replies that ChatState recorded as a turn (a stopped one keeps what it said).
ANSWERED = ("done", "cancelled")


def entry(entry_id: str, role: str, content: str, status: str, request_id: str) -> Entry:
    """A new transcript entry.

    Example:
        >>> entry("u1", "user", "Hi", "sent", "v1-1")["status"]
        'sent'
    """
    return {
        "id": entry_id,
        "role": role,
        "content": content,
        "status": status,
        "request_id": request_id,
    }


def last_index(entries: list[Entry], role: str) -> int | None:
    """The index of the last entry of ``role``, or None.

    Example:
        >>> last_index([entry("u1", "user", "Hi", "sent", "r")], "assistant") is None
        True
    """
    for index in range(len(entries) - 1, -1, -1):
        if entries[index]["role"] == role:
            return index
    return None


def initial_status(state: str) -> dict[str, Any]:
    """The ``status`` trait with nothing measured yet (the status line's fields).

    Example:
        >>> initial_status("loading")["queued"]
        0
    """
    return {
        "state": state,
        "message": "",
        "tokens_used": 0,
        "context_length": 0,
        "queued": 0,
        "time_to_first_token_s": None,
        "decode_tokens_per_s": None,
        "loading_since": None,
        "notice": "",  # a standing remark on how the model runs (e.g. the native kernel is off)
    }


def chat_state_index(
    entries: list[Entry], index: int, message_count: int, unanswered: dict[str, int]
) -> int:
    """Where the turn of the user entry ``entries[index]`` starts in ChatState's ``messages``
    (``message_count`` of them): the index to edit, or ``message_count`` when ChatState holds
    nothing from there on (a new turn goes at its end).

    Counted back from the end, because ChatState's messages change only there, while their start
    may have lost turns (a conversation that outgrew the context) or hold turns the panel never
    showed (a ChatState passed in with a history). A turn ChatState answered holds its user
    message and, unless the reply was empty, the reply. A turn it never took (its reply failed,
    or was stopped before the model read it) holds the messages ChatState kept in its place,
    ``unanswered[reply_id]``: none for a new message, the old turns for a regenerate or an edit.
    A user message with no reply yet (queued) holds none.

    Example:
        >>> done = entry("a1", "assistant", "Hello!", "done", "r")
        >>> entries = [entry("u1", "user", "Hi", "sent", "r"), done]
        >>> chat_state_index(entries, 0, message_count=2, unanswered={})
        0
        >>> chat_state_index(entries, 0, message_count=5, unanswered={})  # 3 older messages
        3
    """
    held = 0
    for i in range(index, len(entries)):
        reply = entries[i + 1] if i + 1 < len(entries) else None
        if entries[i]["role"] != "user" or reply is None or reply["role"] != "assistant":
            continue
        if reply["id"] in unanswered:
            held += unanswered[reply["id"]]
        elif reply["status"] in ANSWERED:
            held += 1 + bool(reply["content"])
    return min(max(message_count - held, 0), message_count)


def with_siblings(entries: list[Entry], counts: dict[str, Any]) -> list[Entry]:
    """``entries`` with ``siblings: [index, count]`` where their ChatState message has
    siblings (``counts``: `ChatState.sibling_counts`), and without it elsewhere.

    Example:
        >>> with_siblings([{"id": "a1", "state_id": "m1"}], {"m1": (1, 2)})[0]["siblings"]
        [1, 2]
    """
    out = []
    for item in entries:
        item = {k: v for k, v in item.items() if k != "siblings"}
        if item.get("state_id") in counts:
            item["siblings"] = list(counts[item["state_id"]])
        out.append(item)
    return out


def _entry_of(message: dict[str, Any]) -> Entry:
    """An entry for a ChatState message the panel has not shown before."""
    user = message["role"] == "user"
    shown = entry(new_id("u" if user else "a"), message["role"], message["content"], "", "")
    return {**shown, "status": "sent" if user else "done", "state_id": message["id"]}


class ChatTranscript:
    """The ``transcript`` trait of one widget, the reply streaming into it, which replies
    ChatState has not taken as a turn, and the ``status`` trait.

    Args:
        widget: the object holding the ``transcript`` and ``status`` traits (a `ChatWidget`).
        lock: the widget's lock, held for every change (reentrant: the widget holds it too, to
            change the transcript and the status in one state message).

    Example:
        >>> transcript = ChatTranscript(widget, widget_lock)  # doctest: +SKIP
        >>> transcript.add_user("u1", "Hi", "v1-1", queued=False)  # doctest: +SKIP
    """

    def __init__(self, widget: Any, lock: threading.RLock) -> None:
        self._widget = widget
        self.lock = lock
        # The reply streaming now, as sent so far: what a view opened mid-reply catches up from.
        self._live: dict[str, Any] | None = None
        self._stopped: set[str] = set()  # replies shown as stopped whose engine step still runs
        # Replies whose turn ChatState has not taken (yet, or ever, if it failed or was stopped
        # before the model read it), with how many messages ChatState kept in its place.
        self._unanswered: dict[str, int] = {}
        # Entries of ChatState messages off the shown path (hidden siblings), by ``state_id``.
        self._hidden: dict[str, Entry] = {}
        # The records of each reply as it streamed (what a branch of it starts from).
        self._records: dict[str, list[dict[str, Any]]] = {}

    @property
    def entries(self) -> list[Entry]:
        """The entries now (a copy of the list)."""
        return list(self._widget.transcript)

    def find(self, entry_id: str) -> Entry | None:
        """The entry with this id, or None."""
        return next((e for e in self._widget.transcript if e["id"] == entry_id), None)

    def _write(self, entries: list[Entry]) -> None:
        self._widget.transcript = entries

    # ---- the status line ----

    def set_status(self, **changes: Any) -> None:
        """Changes fields of the ``status`` trait (see `initial_status`)."""
        with self.lock:
            self._widget.status = {**initial_status("ready"), **self._widget.status, **changes}

    @contextlib.contextmanager
    def one_update(self) -> Iterator[None]:
        """Sends every trait changed inside as one state message, so no view ever draws a
        finished reply next to a status that still says it is generating."""
        with self.lock, self._widget.hold_sync():
            yield

    # ---- making entries ----

    def add_user(self, user_id: str, text: str, request_id: str, queued: bool) -> None:
        """Appends a user message (``queued`` while another reply is being made)."""
        with self.lock:
            status = "queued" if queued else "sent"
            self._write([*self.entries, entry(user_id, "user", text, status, request_id)])

    def start_reply(self, user_id: str, reply_id: str, request_id: str) -> None:
        """The user message ``user_id`` is being answered: it is sent, and a reply streams."""
        with self.lock:
            entries = [{**e, "status": "sent"} if e["id"] == user_id else e for e in self.entries]
            entries.append(entry(reply_id, "assistant", "", "streaming", request_id))
            self._write(entries)
            self._begin(reply_id, request_id, kept=0)

    def rewind(
        self, index: int, user: Entry, reply_id: str, request_id: str, message_count: int
    ) -> int:
        """Replaces ``entries[index:]`` with ``user`` (sent) and a streaming reply: a regenerate
        (``user`` is the entry there) or an edit (a new entry). Returns the ChatState index the
        turn starts at (`chat_state_index`) for a ChatState of ``message_count`` messages."""
        with self.lock:
            entries = self.entries
            start = chat_state_index(entries, index, message_count, self._unanswered)
            kept = {e["id"] for e in entries[:index]}
            self._unanswered = {k: n for k, n in self._unanswered.items() if k in kept}
            self._hide(entries[index:])
            self._write(
                [
                    *entries[:index],
                    {**user, "status": "sent"},
                    entry(reply_id, "assistant", "", "streaming", request_id),
                ]
            )
            # Until ChatState takes the turn, it keeps the messages from `start` on.
            self._begin(reply_id, request_id, kept=message_count - start)
            return start

    def _begin(self, reply_id: str, request_id: str, kept: int) -> None:
        self._live = {"reply_id": reply_id, "request_id": request_id, "text": "", "tokens": []}
        self._unanswered[reply_id] = kept

    def answered(
        self, reply_id: str, messages: list[dict[str, Any]], counts: dict[str, Any]
    ) -> None:
        """ChatState took the reply's turn (its stream ended): the reply and the question
        before it get the ids of ChatState's last ``messages``; ``counts`` are its
        `ChatState.sibling_counts`."""
        with self.lock:
            self._unanswered.pop(reply_id, None)
            entries = self.entries
            index = next((i for i, e in enumerate(entries) if e["id"] == reply_id), None)
            if index is None or not messages:
                return
            last = messages[-1]
            if last["role"] == "assistant":
                entries[index] = {**entries[index], "state_id": last["id"]}
                last = messages[-2] if len(messages) > 1 else None
            before = entries[index - 1] if index else None
            if last is not None and before is not None and before["role"] == last["role"]:
                entries[index - 1] = {**before, "state_id": last["id"]}
            self._write(with_siblings(entries, counts))

    # ---- branches ----

    def records(self, entry_id: str) -> list[dict[str, Any]] | None:
        """The token records of a reply as it streamed (None: not streamed in this panel)."""
        with self.lock:
            records = self._records.get(entry_id)
            return None if records is None else list(records)

    def start_branch(
        self, index: int, reply_id: str, request_id: str, message_count: int, position: int
    ) -> None:
        """A branch of ``entries[index]`` (ChatState's message ``position`` of
        ``message_count``) streams in its place; what followed it is hidden."""
        with self.lock:
            entries = self.entries
            self._hide(entries[index:])
            streaming = entry(reply_id, "assistant", "", "streaming", request_id)
            self._write([*entries[:index], streaming])
            # Until ChatState takes the branch, it keeps its question and what followed.
            self._begin(reply_id, request_id, kept=message_count - position + 1)

    def show_path(
        self, index: int, messages: list[dict[str, Any]], position: int, counts: dict[str, Any]
    ) -> None:
        """Shows ChatState's ``messages[position:]`` from ``entries[index]`` on (after a
        switch), with the entries shown for them before where there are some."""
        with self.lock:
            entries = self.entries
            self._hide(entries[index:])
            shown = [self._hidden.pop(m["id"], None) or _entry_of(m) for m in messages[position:]]
            self._write(with_siblings([*entries[:index], *shown], counts))

    def _hide(self, entries: list[Entry]) -> None:
        for hidden in entries:
            if hidden.get("state_id"):
                self._hidden[hidden["state_id"]] = hidden

    # ---- updating them ----

    def add_tokens(self, reply_id: str, records: list[dict[str, Any]]) -> bool:
        """Records streamed tokens of the live reply; False if the reply is shown as stopped
        (nothing more streams into it)."""
        with self.lock:
            if reply_id in self._stopped:
                return False
            live = self._live
            if live is not None and live["reply_id"] == reply_id:
                live["tokens"].extend(records)
                live["text"] += "".join(r["text"] for r in records)
            return True

    def snapshot(self) -> dict[str, Any]:
        """The fields of a ``chat.snapshot``: the live reply as sent so far (None: no reply)."""
        with self.lock:
            live = self._live
            return {
                "reply_id": live["reply_id"] if live else None,
                "text": live["text"] if live else "",
                "count": len(live["tokens"]) if live else 0,
                "tokens": list(live["tokens"]) if live else [],
            }

    def show_stopped(self) -> bool:
        """Shows the live reply as stopped, with the text it had; False if none was live."""
        with self.lock:
            live, self._live = self._live, None
            if live is None:
                return False
            self._records[live["reply_id"]] = live["tokens"]
            self._stopped.add(live["reply_id"])
            self.update(
                live["reply_id"], content=live["text"], status="cancelled", stop_reason="cancelled"
            )
            return True

    def finish(
        self, reply_id: str, text: str, stop_reason: str, notice: str, stats: dict[str, Any]
    ) -> None:
        """The reply ended (finished or stopped) with ``text``."""
        with self.lock:
            if self._live is not None and self._live["reply_id"] == reply_id:
                self._records[reply_id] = self._live["tokens"]
            self._live = None
            self._stopped.discard(reply_id)
            status = "cancelled" if stop_reason == "cancelled" else "done"
            self.update(
                reply_id,
                content=text,
                status=status,
                stop_reason=stop_reason,
                notice=notice,
                stats=stats,
            )

    def fail(self, reply_id: str, user_id: str | None, request_id: str, message: str) -> None:
        """The reply failed: it keeps what it had streamed and shows ``message``."""
        with self.lock:
            live, self._live = self._live, None
            entries = self.entries
            shown = next((e["content"] for e in entries if e["id"] == reply_id), "")
            partial = live["text"] if live and live["reply_id"] == reply_id else shown
            self._stopped.discard(reply_id)
            if user_id is not None:
                entries = [{**e, "status": "sent"} if e["id"] == user_id else e for e in entries]
            if not any(e["id"] == reply_id for e in entries):
                # Failed before the reply started (e.g. the model never loaded).
                entries.append(entry(reply_id, "assistant", "", "error", request_id))
            self._write(entries)
            self.update(
                reply_id, content=partial, status="error", stop_reason="error", error=message
            )

    def update(self, entry_id: str, **changes: Any) -> None:
        """Changes fields of one entry."""
        with self.lock:
            self._write([{**e, **changes} if e["id"] == entry_id else e for e in self.entries])

    def remove(self, ids: set[str]) -> None:
        """Removes entries (a queued message dropped before it was sent)."""
        with self.lock:
            self._write([e for e in self.entries if e["id"] not in ids])

    def clear(self) -> None:
        """Empties the transcript (a new conversation)."""
        with self.lock:
            self._live = None
            self._unanswered.clear()
            self._hidden.clear()
            self._records.clear()
            self._write([])
