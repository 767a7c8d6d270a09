"""The ChatWidget's side of its comm: the front end's requests, answered or routed.

`ChatWidget` mixes this in. The inspector, Cache, Steering and Compare tabs share the chat's comm;
their messages go to their own services first, and what is left is the chat protocol
(`protocol`): send, regenerate, edit, branch, switch, export and sync. Every request is answered;
a failure becomes a ``chat.error`` message naming the problem, never an exception into the void.
"""

from __future__ import annotations

import logging
from typing import Any

from kerasllm_widget.widgets import protocol as P
from kerasllm_widget.widgets.chat_replies import describe
from kerasllm_widget.widgets.chat_transcript import last_index
from kerasllm_widget.widgets.envelope import request_id_of

log = logging.getLogger("kerasllm_widget.widgets.chat_widget")


class ChatMessages:
    """Handles the chat protocol's requests for `ChatWidget` (kernel main thread)."""

    def _on_custom_message(self, widget: Any, content: Any, buffers: list[Any]) -> None:
        tabs = (self._inspectors, self._cache_view, self._steering, self._compare)
        if any(tab.handle(content, buffers) for tab in tabs):
            return  # an inspector tab's, the Cache, Steering or Compare tab's request
        try:
            request = P.parse_request(content)
        except P.ProtocolError as exc:
            self._broadcast_error(request_id_of(content), None, P.ERROR_BAD_REQUEST, str(exc))
            return
        handler = {
            P.CHAT_SEND: self._handle_send,
            P.CHAT_REGENERATE: self._handle_regenerate,
            P.CHAT_EDIT: self._handle_edit,
            P.CHAT_CANCEL: lambda r: self.stop(),
            P.CHAT_CLEAR: lambda r: self._clear(),
            P.CHAT_SYNC: self._handle_sync,
            P.CHAT_BRANCH: lambda r: self._branch(r.id, **r.fields),
            P.CHAT_SWITCH: lambda r: self._switch(**r.fields),
            P.CHAT_EXPORT_TREE: self._handle_export_tree,
            P.CHAT_GET_TOKENS: self._handle_get_tokens,
        }[request.kind]
        try:
            handler(request)
        except Exception as exc:  # answered, never raised into the void
            log.exception("handling %s failed", request.kind)
            self._broadcast_error(request.id, None, P.ERROR_BAD_REQUEST, describe(exc))

    def _handle_send(self, request: P.Request) -> None:
        text = request.fields["text"]
        if not text.strip():
            self._broadcast_error(request.id, None, P.ERROR_BAD_REQUEST, "The message is empty.")
            return
        if self.status.get("state") == "error" and self._state is None:
            self._broadcast_error(
                request.id, None, P.ERROR_NOT_READY, self.status.get("message") or "No model."
            )
            return
        self._replies.send(request.id, text)

    def _handle_regenerate(self, request: P.Request) -> None:
        if last_index(self.transcript, "assistant") is None:
            self._broadcast_error(
                request.id, None, P.ERROR_NOTHING_TO_DO, "There is no reply to regenerate."
            )
            return
        self._replies.regenerate(request.id)

    def _handle_edit(self, request: P.Request) -> None:
        message_id, text = request.fields["message_id"], request.fields["text"]
        edited = self._transcript.find(message_id)
        if edited is None or edited["role"] != "user":
            self._broadcast_error(
                request.id, None, P.ERROR_BAD_REQUEST, "That message cannot be edited."
            )
            return
        if not text.strip():
            self._broadcast_error(request.id, None, P.ERROR_BAD_REQUEST, "The message is empty.")
            return
        self._replies.edit(request.id, message_id, text)

    def _handle_export_tree(self, request: P.Request) -> None:
        to_json = getattr(self._state, "to_json", None)  # None while the model loads
        document = to_json() if to_json is not None else None
        self._emit(P.envelope(P.CHAT_TREE, request.id, document=document))

    def _handle_get_tokens(self, request: P.Request) -> None:
        message_id = request.fields["message_id"]
        tokens = self._replies.reply_records(message_id)
        if tokens is None:
            self._broadcast_error(
                request.id, None, P.ERROR_NOTHING_TO_DO, "That reply has no tokens to show."
            )
            return
        self._emit(P.envelope(P.CHAT_TOKENS, request.id, reply_id=message_id, tokens=tokens))

    def _handle_sync(self, request: P.Request) -> None:
        with self._lock:
            self._emit(P.envelope(P.CHAT_SNAPSHOT, request.id, **self._transcript.snapshot()))

    # ---- sending ----

    def _emit(self, message: dict[str, Any]) -> None:
        if self.comm is None:  # closed: nobody to tell
            return
        super().send(message)

    def _broadcast_error(self, request_id: str, reply_id: str | None, code: str, message: str):
        self._emit(
            P.envelope(P.CHAT_ERROR, request_id, reply_id=reply_id, code=code, message=message)
        )
