"""Answers the ChatWidget's Cache tab: the key/value cache of its chat, described on request.

The description (`inspect.kv_cache`) renders the conversation once per message to find each
message's slots: a few milliseconds for a short chat, but not work for the kernel's main thread,
where Stop arrives. It runs on a thread of its own; a newer request replaces one not yet started
(a reply's end and a tab being shown close together ask once).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kerasllm_widget import inspect
from kerasllm_widget.widgets import kv_cache_protocol as P
from kerasllm_widget.widgets.envelope import request_id_of

log = logging.getLogger(__name__)


class KvCacheService:
    """The kernel side of the Cache tab of one `ChatWidget`.

    Example:
        >>> service = KvCacheService(chat)  # doctest: +SKIP
        >>> service.handle({"kind": "cache.request", "id": "c1"})  # doctest: +SKIP
        True
    """

    def __init__(self, chat: Any) -> None:
        self._chat = chat
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasllm-cache")
        self._lock = threading.Lock()
        self._latest = 0
        self._closed = False

    def handle(self, content: Any, buffers: Any = None) -> bool:
        """Answers ``content`` if it is a Cache view message; False if it is someone else's."""
        if not P.is_cache_message(content):
            return False
        try:
            request = P.parse_request(content)
        except P.ProtocolError as exc:
            self._error(request_id_of(content), P.ERROR_BAD_REQUEST, str(exc))
            return True
        with self._lock:
            self._latest += 1
            token = self._latest
        if not self._closed:
            self._executor.submit(self._answer, request.id, token)
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until every request so far is answered (for tests and notebooks)."""
        done = threading.Event()
        self._executor.submit(done.set)
        return done.wait(timeout)

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _answer(self, request_id: str, token: int) -> None:
        if token != self._latest:  # a newer request asks the same thing
            self._error(request_id, "superseded", "a newer request replaced this one")
            return
        state = self._chat.chat_state
        if state is None:
            self._error(request_id, P.ERROR_NOT_READY, "the model is still loading")
            return
        try:
            self._send(*P.cache_result(request_id, inspect.kv_cache(state)))
        except Exception as exc:  # answered as a message, never raised into the void
            log.exception("describing the cache failed")
            self._error(request_id, P.ERROR_FAILED, f"{type(exc).__name__}: {exc}")

    def _send(self, content: dict, buffers: list | None = None) -> None:
        if getattr(self._chat, "comm", None) is None:  # closed: nobody to tell
            return
        self._chat.send(content, buffers or None)

    def _error(self, request_id: str, code: str, message: str) -> None:
        self._send(P.envelope(P.CACHE_ERROR, request_id, code=code, message=message))
