"""The ChatWidget's kernel side: protocol, worker thread and the widget driven through its message
handlers with no front end (the browser tests in tests/browser/ cover the front end)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from kerasllm_widget.generation.events import Alternative, DoneEvent, TokenEvent
from kerasllm_widget.widgets import protocol as P
from kerasllm_widget.widgets._worker import GenerationWorker, Task

ROOT = Path(__file__).resolve().parents[1]


def _done(text: str = "", n: int = 0, reason: str = "stop_token") -> DoneEvent:
    return DoneEvent(
        stop_reason=reason,
        text=text,
        token_ids=list(range(n)),
        prompt_tokens=3,
        generated_tokens=n,
        time_to_first_token_s=0.01,
        prefill_tokens_per_s=100.0,
        decode_tokens_per_s=50.0,
    )


def _tokens(texts: list[str]) -> list[TokenEvent]:
    return [TokenEvent(index=i, token_id=i, text=t, logprob=-0.5) for i, t in enumerate(texts)]


# ---- protocol ----


def test_protocol_kinds_match_the_typescript_mirror():
    source = (ROOT / "js" / "shared" / "protocol.ts").read_text(encoding="utf-8")

    def block(name: str) -> set[str]:
        body = re.search(rf"export const {name} = \{{(.*?)\}} as const", source, re.S)
        assert body is not None, f"{name} not found in protocol.ts"
        return set(re.findall(r'"(chat\.[a-z_]+)"', body.group(1)))

    assert block("REQUEST") == set(P.REQUEST_KINDS)
    assert block("RESPONSE") == set(P.RESPONSE_KINDS)
    ts_codes = re.search(r"export type ErrorCode =([^;]*);", source).group(1)
    py_codes = {getattr(P, n) for n in dir(P) if n.startswith("ERROR_")}
    assert set(re.findall(r'"([a-z_]+)"', ts_codes)) == py_codes
    version = re.search(r"PROTOCOL_VERSION = (\d+)", source).group(1)
    assert int(version) == P.PROTOCOL_VERSION


@pytest.mark.parametrize(
    "message, problem",
    [
        ("chat.send", "message object"),
        ({"kind": "chat.send", "text": "hi"}, "'id'"),
        ({"kind": "chat.nope", "id": "a"}, "unknown message kind"),
        ({"kind": "chat.send", "id": "a"}, "'text'"),
        ({"kind": "chat.edit", "id": "a", "text": "x"}, "'message_id'"),
        ({"kind": "chat.send", "id": "a", "text": 3}, "'text'"),
    ],
)
def test_parse_request_names_what_is_wrong(message, problem):
    with pytest.raises(P.ProtocolError, match=problem):
        P.parse_request(message)


def test_parse_request_keeps_only_known_fields():
    request = P.parse_request({"kind": "chat.send", "id": "v1", "text": "hi", "extra": 1})
    assert request == P.Request(kind="chat.send", id="v1", fields={"text": "hi"})


def test_token_records_are_json_safe():
    import json

    event = TokenEvent(
        index=0,
        token_id=5,
        text="a",
        logprob=float("-inf"),
        top_k=[Alternative(token_id=5, text="a", prob=float("nan"))],
    )
    record = P.token_record(event)
    assert record["logprob"] is None and record["top_k"][0]["prob"] is None
    json.dumps(record, allow_nan=False)  # what Jupyter's serializer demands


# ---- worker ----


def test_worker_batches_tokens_and_delivers_all_in_order_before_done():
    batches: list[list[str]] = []
    finished: list[str] = []

    def fast_stream(cancel):
        # 40 tokens at once: with a 50 ms interval they cannot all go one by one.
        yield from _tokens([f"t{i} " for i in range(40)])
        yield _done("".join(f"t{i} " for i in range(40)), 40)

    worker = GenerationWorker()
    task = worker.submit(
        Task(
            fast_stream,
            on_tokens=lambda t, batch: batches.append([e.text for e in batch]),
            on_done=lambda t, done: finished.append(done.text),
        )
    )
    assert task.wait(10)
    worker.close()
    flat = [text for batch in batches for text in batch]
    assert flat == [f"t{i} " for i in range(40)]
    assert 1 < len(batches) < 40
    assert len(batches[0]) == 1  # the first token is not held back
    assert finished == ["".join(flat)]
    assert isinstance(task.result, DoneEvent)


def test_worker_flushes_a_waiting_batch_while_the_engine_is_busy():
    """A token must not wait for the next token when that one takes long to compute."""
    seen = threading.Event()
    batches: list[list[str]] = []

    def stream(cancel):
        yield from _tokens(["a", "b"])  # "b" arrives within the interval and is held
        # The engine now computes for a long while: "b" must still reach the front end.
        assert seen.wait(5), "the held token was never flushed"
        yield _done("ab", 2)

    def on_tokens(task, batch):
        batches.append([e.text for e in batch])
        if [t for b in batches for t in b] == ["a", "b"]:
            seen.set()

    worker = GenerationWorker()
    task = worker.submit(Task(stream, on_tokens=on_tokens))
    assert task.wait(10)
    worker.close()
    assert task.exception is None
    assert batches == [["a"], ["b"]]


def test_worker_runs_tasks_one_at_a_time_in_order():
    active, order = [], []
    lock = threading.Lock()

    def make(name):
        def run(cancel):
            with lock:
                active.append(name)
                assert len(active) == 1
            time.sleep(0.02)
            with lock:
                active.remove(name)
                order.append(name)

        return run

    worker = GenerationWorker()
    tasks = [worker.submit(Task(make(i), stream=False)) for i in range(5)]
    assert all(t.wait(10) for t in tasks)
    worker.close()
    assert order == list(range(5))


def test_worker_reports_errors_after_the_tokens_made_before_them():
    calls = []

    def failing(cancel):
        yield from _tokens(["x", "y"])
        raise RuntimeError("boom")

    worker = GenerationWorker()
    task = worker.submit(
        Task(
            failing,
            on_tokens=lambda t, batch: calls.append(("tokens", [e.text for e in batch])),
            on_error=lambda t, exc: calls.append(("error", str(exc))),
            on_done=lambda t, d: calls.append(("done", d)),
        )
    )
    assert task.wait(10)
    assert [c[0] for c in calls][-1] == "error"
    assert [t for kind, payload in calls if kind == "tokens" for t in payload] == ["x", "y"]
    assert isinstance(task.exception, RuntimeError)
    # The thread survives a failed task.
    assert worker.submit(Task(lambda c: 7, stream=False)).wait(5)
    worker.close()


def test_worker_cancel_reaches_the_running_stream_and_drop_skips_queued_ones():
    started = threading.Event()
    dropped = []

    def endless(cancel):
        started.set()
        i = 0
        while not cancel.is_set():
            yield TokenEvent(index=i, token_id=i, text=".", logprob=0.0)
            i += 1
            time.sleep(0.002)
        yield _done("." * i, i, reason="cancelled")

    worker = GenerationWorker()
    running = worker.submit(Task(endless))
    queued = worker.submit(Task(endless, on_dropped=lambda t: dropped.append(t)))
    assert started.wait(5)
    assert [t.dropped for t in worker.drop_pending()] == [True]
    worker.cancel_current()
    assert running.wait(5) and queued.wait(5)
    assert running.result.stop_reason == "cancelled"
    assert dropped == [queued] and not queued.started
    worker.close()


def test_worker_reads_the_stream_to_its_end_after_the_done_event():
    """ChatState may record the turn after yielding DoneEvent; the worker must not cut that off."""
    recorded = []

    def stream(cancel):
        yield from _tokens(["hi"])
        yield _done("hi", 1)
        recorded.append("turn saved")

    worker = GenerationWorker()
    assert worker.submit(Task(stream)).wait(5)
    worker.close()
    assert recorded == ["turn saved"]


def test_worker_close_stops_a_running_stream():
    started = threading.Event()

    def endless(cancel):
        started.set()
        while not cancel.is_set():
            yield TokenEvent(index=0, token_id=0, text="", logprob=0.0)
            time.sleep(0.005)
        yield _done(reason="cancelled")

    worker = GenerationWorker()
    task = worker.submit(Task(endless))
    assert started.wait(5)
    worker.close(timeout=5)
    assert task.finished and task.result.stop_reason == "cancelled"
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(Task(endless))
