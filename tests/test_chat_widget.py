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
        reply=text,
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
            on_done=lambda t, done: finished.append(done.reply),
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


# ---- the widget, on a real (tiny, random-weight) model, driven through its message handlers ----


class FrontEnd:
    """Plays the browser's side of the comm: records what the kernel sends, sends requests."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.messages: list[dict] = []
        self.states: list[dict] = []  # the trait changes of each state message, in order
        self._lock = threading.Lock()
        widget.comm.send = self._record  # the comm is the transport; the widget stays real
        self._counter = 0

    def _record(self, data=None, metadata=None, buffers=None) -> None:
        if data and data.get("method") == "custom":
            with self._lock:
                self.messages.append(data["content"])
        elif data and data.get("method") == "update":
            with self._lock:
                self.states.append(data["state"])

    def request(self, kind: str, **fields) -> str:
        self._counter += 1
        request_id = f"view-{self._counter}"
        content = {"kind": kind, "id": request_id, **fields}
        self.widget.comm.handle_msg(
            {"content": {"data": {"method": "custom", "content": content}}, "buffers": []}
        )
        return request_id

    def of_kind(self, kind: str, request_id: str | None = None) -> list[dict]:
        with self._lock:
            return [
                m
                for m in self.messages
                if m["kind"] == kind and (request_id is None or m["id"] == request_id)
            ]


def _wait_for(predicate, timeout: float = 180, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _idle(widget) -> bool:
    entries = widget.transcript
    return (
        widget.status.get("state") == "ready"
        and not widget._worker.busy
        and all(e["status"] not in ("queued", "streaming") for e in entries)
    )


def _tiny_chat_model(**backbone_overrides):
    """A random-weight Llama (2 layers, hidden 64) whose vocabulary is exactly its tokenizer's,
    so that every id it samples decodes."""
    import keras
    from tiny_llama import TINY_BACKBONE, tiny_tokenizer

    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM
    from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor

    keras.utils.set_random_seed(0)
    tokenizer = tiny_tokenizer()
    backbone = Llama3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), **{**TINY_BACKBONE, **backbone_overrides}
    )
    return Llama3CausalLM(backbone, Llama3CausalLMPreprocessor(tokenizer), preset_name="tiny")


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_chat_model()


@pytest.fixture
def chat(tiny_model):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    widget = ChatWidget(tiny_model, temperature=0.0, max_new_tokens=8)
    yield widget
    widget.close()


def test_send_from_the_front_end_streams_tokens_then_done(chat, tiny_model):
    view = FrontEnd(chat)
    request_id = view.request("chat.send", text="Hello there")
    _wait_for(lambda: _idle(chat) and len(chat.transcript) == 2, what="the reply")

    user, reply = chat.transcript
    assert (user["role"], user["content"]) == ("user", "Hello there")
    assert reply["role"] == "assistant" and reply["status"] == "done"
    batches = view.of_kind("chat.token", request_id)
    assert batches and all(b["reply_id"] == reply["id"] for b in batches)
    tokens = [t for b in batches for t in b["tokens"]]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    # The deltas build the reply; the engine may hand bytes it held back (an incomplete UTF-8
    # character at the very end) only to the DoneEvent's whole text, which the transcript keeps.
    assert reply["content"].startswith("".join(t["text"] for t in tokens))
    (done,) = view.of_kind("chat.done", request_id)
    assert done["text"] == reply["content"] and done["reply_id"] == reply["id"]
    assert done["stats"]["generated_tokens"] == len(tokens) == reply["stats"]["generated_tokens"]
    assert chat.status["tokens_used"] == chat.chat_state.context_tokens() > 0
    assert chat.status["context_length"] == tiny_model.info["context_length"]
    assert chat.model_info["backend"] == "jax"
    # Batches are the last thing before done: nothing streams after the end.
    kinds = [m["kind"] for m in view.messages]
    assert kinds[-1] == "chat.done" and set(kinds[:-1]) == {"chat.token"}


def test_a_finished_reply_and_the_ready_status_reach_the_views_in_one_message(chat):
    # Two messages would let a view draw the finished reply beside a Stop button for a frame.
    view = FrontEnd(chat)
    view.request("chat.send", text="Hello there")
    _wait_for(lambda: _idle(chat) and len(chat.transcript) == 2, what="the reply")

    finished = [
        state
        for state in view.states
        if "transcript" in state and state["transcript"][-1]["status"] == "done"
    ]
    assert finished, "no state message carried the finished reply"
    assert "status" in finished[0], "the finished reply came without its status"
    assert finished[0]["status"]["state"] == "ready"


def test_python_send_returns_a_handle_and_calls_the_callbacks(chat):
    tokens, dones = [], []
    chat.on_token(tokens.append)
    chat.on_done(dones.append)
    handle = chat.send("What is a cat?")
    text = handle.result(timeout=180)
    assert handle.done and handle.event.stop_reason in ("max_new_tokens", "stop_token")
    assert text == dones[0].reply and text.startswith("".join(t.text for t in tokens))
    assert chat.history == [
        {"role": "user", "content": "What is a cat?"},
        {"role": "assistant", "content": text},
    ]
    chat.on_token(tokens.append, remove=True)
    chat.send("More?").result(timeout=180)
    assert len(dones) == 2 and len(tokens) == dones[0].generated_tokens
    with pytest.raises(ValueError, match="non-empty"):
        chat.send("   ")


def _hold_first_reply(chat):
    """Blocks the first reply on its first token until the test lets it go."""
    reached, release = threading.Event(), threading.Event()

    def hold(event):
        if not reached.is_set():
            reached.set()
            release.wait(60)

    chat.on_token(hold)
    return reached, release


def test_a_second_send_while_generating_is_queued_visibly_and_runs_next(chat):
    view = FrontEnd(chat)
    reached, release = _hold_first_reply(chat)
    first = view.request("chat.send", text="First question")
    assert reached.wait(180)
    second = view.request("chat.send", text="Second question")
    queued = chat.transcript[-1]
    assert (queued["content"], queued["status"]) == ("Second question", "queued")
    assert chat.status["state"] == "generating" and chat.status["queued"] == 1
    release.set()
    _wait_for(lambda: _idle(chat) and len(chat.transcript) == 4, what="both replies")
    assert [(e["role"], e["request_id"]) for e in chat.transcript] == [
        ("user", first),
        ("assistant", first),
        ("user", second),
        ("assistant", second),
    ]
    assert chat.transcript[2]["status"] == "sent" and chat.status["queued"] == 0
    assert len(view.of_kind("chat.done")) == 2


def test_stop_from_the_front_end_ends_the_reply_and_keeps_what_was_said(chat):
    chat.max_new_tokens = 256
    view = FrontEnd(chat)
    reached, release = _hold_first_reply(chat)
    request_id = view.request("chat.send", text="Tell me a long story")
    assert reached.wait(180)
    view.request("chat.cancel")
    # The panel shows the stop at once, while the engine finishes its step (held here).
    assert chat.transcript[-1]["status"] == "cancelled"
    assert chat.status["state"] == "ready"
    shown = chat.transcript[-1]["content"]
    release.set()
    _wait_for(lambda: _idle(chat), what="the stopped reply")
    (done,) = view.of_kind("chat.done", request_id)
    assert done["stop_reason"] == "cancelled"
    assert 0 < done["stats"]["generated_tokens"] < 256
    reply = chat.transcript[-1]
    assert reply["status"] == "cancelled" and reply["content"] == done["text"]
    # Nothing streamed into the reply after Stop: the panel kept what it showed.
    streamed = "".join(
        t["text"] for b in view.of_kind("chat.token", request_id) for t in b["tokens"]
    )
    assert streamed == shown
    if done["text"]:  # ChatState keeps a stopped reply as the assistant's turn
        assert chat.history[-1] == {"role": "assistant", "content": done["text"]}


def test_a_view_opened_mid_reply_catches_up_from_a_snapshot(chat):
    chat.max_new_tokens = 24
    first_view = FrontEnd(chat)
    reached, release = threading.Event(), threading.Event()
    count = [0]

    def hold(event):
        count[0] += 1
        if count[0] == 12:
            reached.set()
            release.wait(60)

    chat.on_token(hold)
    first_view.request("chat.send", text="Count to ten")
    assert reached.wait(180)
    time.sleep(0.1)  # let the flusher send what it holds, so the snapshot is not empty
    sync_id = first_view.request("chat.sync")
    (snapshot,) = first_view.of_kind("chat.snapshot", sync_id)
    release.set()
    _wait_for(lambda: _idle(chat), what="the reply")
    streamed = [t for b in first_view.of_kind("chat.token") for t in b["tokens"]]
    assert snapshot["reply_id"] == chat.transcript[-1]["id"]
    assert 0 < snapshot["count"] < len(streamed)
    assert snapshot["tokens"] == streamed[: snapshot["count"]]
    assert snapshot["text"] == "".join(t["text"] for t in snapshot["tokens"])
    # After the reply, a sync has nothing to catch up on.
    idle_sync = first_view.request("chat.sync")
    assert first_view.of_kind("chat.snapshot", idle_sync)[0]["reply_id"] is None


def test_requests_that_cannot_be_served_are_answered_with_errors(chat):
    view = FrontEnd(chat)
    bad = view.request("chat.unknown")
    empty = view.request("chat.send", text="  ")
    no_text = view.request("chat.send")
    nothing = view.request("chat.regenerate")
    ghost = view.request("chat.edit", message_id="nope", text="hi")
    codes = {m["id"]: m["code"] for m in view.of_kind("chat.error")}
    assert codes == {
        bad: "bad_request",
        empty: "bad_request",
        no_text: "bad_request",
        nothing: "nothing_to_do",
        ghost: "bad_request",
    }
    assert chat.transcript == [] and not chat._worker.busy


def test_regenerate_and_edit_rewind_the_conversation(chat):
    view = FrontEnd(chat)
    chat.send("One").result(timeout=180)
    chat.send("Two").result(timeout=180)
    before = [dict(e) for e in chat.transcript]

    again = view.request("chat.regenerate")
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", again), what="regenerating")
    after = chat.transcript
    assert [e["content"] for e in after[:3]] == [e["content"] for e in before[:3]]
    assert after[3]["id"] != before[3]["id"]
    # Greedy decoding on the same conversation says the same thing again.
    assert after[3]["content"] == before[3]["content"]
    assert [m["content"] for m in chat.history[::2]] == ["One", "Two"]

    edit = view.request("chat.edit", message_id=before[0]["id"], text="Uno")
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", edit), what="the edit")
    assert [(e["role"], e["content"]) for e in chat.transcript][0] == ("user", "Uno")
    assert len(chat.transcript) == 2
    assert chat.history == [
        {"role": "user", "content": "Uno"},
        {"role": "assistant", "content": chat.transcript[1]["content"]},
    ]

    view.request("chat.clear")
    _wait_for(lambda: _idle(chat) and chat.history == [], what="the reset")
    assert chat.transcript == []


def _broken_stream(*args, **kwargs):
    yield from ()
    raise RuntimeError("the device went away")


def test_a_regenerate_or_edit_that_fails_leaves_the_history_as_it_was(chat, monkeypatch):
    view = FrontEnd(chat)
    chat.send("One").result(timeout=180)
    chat.send("Two").result(timeout=180)
    history, first = chat.history, chat.transcript[0]["id"]
    monkeypatch.setattr("kerasllm_widget.chat.chat_state.stream_ids", _broken_stream)

    with pytest.raises(RuntimeError, match="device went away"):
        chat.regenerate().result(timeout=180)
    _wait_for(lambda: _idle(chat), what="the failed regenerate")
    assert chat.transcript[-1]["status"] == "error"  # the panel shows the failure
    assert chat.history == history

    edit = view.request("chat.edit", message_id=first, text="Uno")
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.error", edit), what="the failed edit")
    assert [(e["content"], e["status"]) for e in chat.transcript] == [
        ("Uno", "sent"),
        ("", "error"),
    ]
    assert chat.history == history

    # Retried once the model works, the failed edit is answered in place of the turns it
    # replaces: ChatState ends as the panel shows, not with "Uno" after the old turns.
    monkeypatch.undo()
    retry = view.request("chat.regenerate")
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", retry), what="the retry")
    assert chat.history == [
        {"role": "user", "content": "Uno"},
        {"role": "assistant", "content": chat.transcript[1]["content"]},
    ]


def test_a_regenerate_or_edit_stopped_before_it_starts_leaves_the_history_as_it_was(chat):
    from kerasllm_widget.training.turns import model_turns
    from kerasllm_widget.widgets.chat_widget import TRAINING_WAIT_MESSAGE

    view = FrontEnd(chat)
    chat.send("One").result(timeout=180)
    chat.send("Two").result(timeout=180)
    history, first = chat.history, chat.transcript[0]["id"]
    turns = model_turns(chat.chat_state.model)
    training, release = threading.Event(), threading.Event()

    def fit():  # stands for a fit without a TrainingMonitor: replies wait for its end
        with turns.training():
            training.set()
            release.wait(60)

    thread = threading.Thread(target=fit)
    thread.start()
    try:
        assert training.wait(10)

        def stop_while_waiting(kind: str, **fields) -> dict:
            request_id = view.request(kind, **fields)
            _wait_for(lambda: chat.status["message"] == TRAINING_WAIT_MESSAGE, what="the wait")
            queued = view.request("chat.edit", message_id=first, text="Queued")
            view.request("chat.cancel")  # stops the waiting one, drops the queued one
            _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", request_id), what="Stop")
            assert not view.of_kind("chat.done", queued)
            return view.of_kind("chat.done", request_id)[0]

        assert stop_while_waiting("chat.regenerate")["stop_reason"] == "cancelled"
        assert chat.history == history
        assert stop_while_waiting("chat.edit", message_id=first, text="Uno")["text"] == ""
        assert chat.history == history
        assert [e["content"] for e in chat.transcript] == ["Uno", ""]
    finally:
        release.set()
        thread.join()

    # After training, asking again answers the stopped edit in place of the turns it replaces.
    retry = view.request("chat.regenerate")
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", retry), what="the retry")
    reply = chat.transcript[1]["content"]
    assert chat.history == [{"role": "user", "content": "Uno"}] + (
        [{"role": "assistant", "content": reply}] if reply else []
    )


def test_chat_state_index_counts_back_from_the_end_of_the_conversation():
    from kerasllm_widget.widgets.chat_transcript import chat_state_index, entry

    entries = [
        entry("u1", "user", "One", "sent", "r1"),
        entry("a1", "assistant", "Uno.", "done", "r1"),
        entry("u2", "user", "Two", "sent", "r2"),
        entry("a2", "assistant", "", "error", "r2"),  # failed: ChatState took no turn
        entry("u3", "user", "Three", "sent", "r3"),
        entry("a3", "assistant", "", "cancelled", "r3"),  # stopped at once: the user turn only
        entry("u4", "user", "Four", "queued", "r4"),  # not answered yet
    ]
    # ChatState holds [One, Uno., Three].
    assert [chat_state_index(entries, i, 3, {}) for i in (0, 2, 4, 6)] == [0, 2, 2, 3]
    # The oldest turn dropped (the context overflowed), or older turns the panel never showed.
    assert [chat_state_index(entries, i, 1, {}) for i in (0, 2)] == [0, 0]
    assert chat_state_index(entries, 0, 7, {}) == 4
    # A regenerate of "Two" that failed: ChatState kept the old turn (2 messages) in its place.
    assert chat_state_index(entries, 2, 5, {"a2": 2}) == 2


def test_settings_traitlets_reach_the_model(chat):
    chat.temperature, chat.seed = 1.0, 123
    first = chat.send("Hi").result(timeout=180)
    chat.reset()
    assert chat.send("Hi").result(timeout=180) == first  # same seed, same sample
    chat.reset()
    chat.seed = 124
    assert chat.send("Hi").result(timeout=180) != first

    chat.reset()
    assert chat.history == [] and chat.transcript == []  # at once, not some time later

    chat.system_prompt = "Arrr, answer like a pirate."
    chat.send("Hello").result(timeout=180)
    assert chat.chat_state.system_prompt == "Arrr, answer like a pirate."
    assert "pirate" in chat.chat_state.prompt

    import traitlets

    with pytest.raises(traitlets.TraitError):
        chat.temperature = -1
    with pytest.raises(traitlets.TraitError):
        chat.max_new_tokens = 0
    with pytest.raises(TypeError, match="unknown setting"):
        type(chat)(chat.chat_state, temprature=0.5)


def test_closing_the_widget_stops_its_generation(tiny_model):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget(tiny_model, max_new_tokens=256)
    started = threading.Event()
    chat.on_token(lambda event: started.set())
    handle = chat.send("Go on forever")
    assert started.wait(180)
    chat.close()
    assert handle.wait(30)
    assert handle.event.stop_reason == "cancelled"
    assert handle.event.generated_tokens < 256
    assert not chat._worker._thread.is_alive()


@pytest.fixture(scope="module")
def short_context_model():
    return _tiny_chat_model(max_sequence_length=96)


def test_failures_show_in_the_panel_and_the_chat_goes_on(short_context_model):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget(short_context_model, temperature=0.0, max_new_tokens=4)
    view = FrontEnd(chat)
    try:
        request_id = view.request("chat.send", text="word " * 200)  # more than the context
        _wait_for(lambda: _idle(chat) and len(chat.transcript) == 2, what="the error")
        user, reply = chat.transcript
        assert user["content"].startswith("word")  # the transcript keeps what was typed
        assert reply["status"] == "error" and "context" in reply["error"]
        (error,) = view.of_kind("chat.error", request_id)
        assert error["code"] == "generation" and error["reply_id"] == reply["id"]
        assert chat.status["state"] == "ready" and chat.history == []

        # The next message works, and a conversation that outgrows the context drops old turns
        # with a notice in the transcript.
        for i in range(8):
            chat.send(f"Message number {i} about cats and dogs").result(timeout=180)
            if chat.transcript[-1].get("notice"):
                break
        assert "dropped" in chat.transcript[-1]["notice"]
        assert chat.transcript[-1]["status"] == "done"
        assert len(chat.history) < 2 * (i + 1)
    finally:
        chat.close()


def test_a_model_that_fails_to_load_shows_why_and_fails_queued_messages(tmp_path):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    missing = tmp_path / "no-such-model"
    chat = ChatWidget.from_preset(str(missing))
    view = FrontEnd(chat)
    try:
        assert chat.status["state"] in ("loading", "error")
        handle = chat.send("Hello?")
        assert not chat.wait_ready(timeout=60)
        assert chat.status["state"] == "error" and "no-such-model" in chat.status["message"]
        with pytest.raises(RuntimeError, match="no-such-model"):
            handle.result(timeout=60)
        assert chat.transcript[-1]["status"] == "error"
        late = view.request("chat.send", text="Anyone?")
        assert view.of_kind("chat.error", late)[0]["code"] == "not_ready"
    finally:
        chat.close()


@pytest.mark.slow
def test_from_preset_shows_the_panel_first_and_loads_behind_it(smollm2_gguf):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget.from_preset("smollm2-135m-instruct", temperature=0.0, max_new_tokens=4)
    try:
        assert chat.status["state"] == "loading" and chat.status["loading_since"]
        assert chat.model_info == {"name": "smollm2-135m-instruct"}
        assert chat.wait_ready(timeout=300)
        assert chat.status["state"] == "ready" and chat.status["context_length"] > 1000
        assert "smollm2" in chat.model_info["name"].lower() and chat.model_info["dtype"]
    finally:
        chat.close()
