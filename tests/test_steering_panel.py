"""The Steering and Compare tabs' kernel side, driven through the ChatWidget's message handlers
with no front end (tests/browser/test_steering_browser.py covers the front end): the protocol
and its TypeScript mirror, `ChatWidget.steering`, the tab's vector and side-by-side replies (a
new strength compiles nothing), Stop, and `compare_with` / `CompareView`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.widgets import steer_protocol as P
from tests.test_chat_widget import FrontEnd, _tiny_chat_model, _wait_for

ROOT = Path(__file__).resolve().parents[1]


class RecordingFrontEnd(FrontEnd):
    """`FrontEnd` that keeps each message's binary buffers too."""

    def __init__(self, widget) -> None:
        super().__init__(widget)
        self.buffers: dict[str, list] = {}

    def _record(self, data=None, metadata=None, buffers=None) -> None:
        super()._record(data, metadata, buffers)
        if data and data.get("method") == "custom" and buffers:
            self.buffers[data["content"]["id"]] = [bytes(b) for b in buffers]

    def answer(self, request_id: str, kinds: tuple[str, ...]) -> dict:
        _wait_for(
            lambda: any(m["kind"] in kinds for m in self._answers(request_id)),
            timeout=240,
            what=f"{kinds} for {request_id}",
        )
        return next(m for m in self._answers(request_id) if m["kind"] in kinds)

    def _answers(self, request_id: str) -> list[dict]:
        with self._lock:
            return [m for m in self.messages if m["id"] == request_id]


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_chat_model()


@pytest.fixture
def chat(tiny_model):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    widget = ChatWidget(tiny_model, temperature=0.0, max_new_tokens=6)
    yield widget
    widget.close()


def test_protocol_kinds_match_the_typescript_mirror():
    source = (ROOT / "js" / "shared" / "steer_protocol.ts").read_text(encoding="utf-8")

    def block(name: str) -> set[str]:
        body = re.search(rf"export const {name} = \{{(.*?)\}} as const", source, re.S)
        assert body is not None, f"{name} not found in steer_protocol.ts"
        return set(re.findall(r'"([a-z]+\.[a-z_]+)"', body.group(1)))

    assert block("REQUEST") == set(P.REQUEST_KINDS)
    assert block("RESPONSE") == set(P.RESPONSE_KINDS)
    ts_codes = re.search(r"export type ErrorCode =([^;]*);", source).group(1)
    assert set(re.findall(r'"([a-z_]+)"', ts_codes)) == {
        getattr(P, n) for n in dir(P) if n.startswith("ERROR_")
    }
    version = re.search(r"STEER_PROTOCOL_VERSION = (\d+);", source).group(1)
    assert int(version) == P.PROTOCOL_VERSION


@pytest.mark.parametrize(
    "message, problem",
    [
        (
            {"kind": "steer.compute", "id": "a", "positive": [], "negative": ["x"], "layer": 0},
            "positive",
        ),
        ({"kind": "steer.compute", "id": "a", "positive": ["x"], "negative": ["x"]}, "'layer'"),
        ({"kind": "steer.ask", "id": "a", "question": " ", "strength": 1}, "question"),
        ({"kind": "steer.ask", "id": "a", "question": "q", "strength": True}, "'strength'"),
        ({"kind": "compare.continue", "id": "a", "sequence_id": "s"}, "'position'"),
    ],
)
def test_parse_request_names_what_is_wrong(message, problem):
    with pytest.raises(P.ProtocolError, match=problem):
        P.parse_request(message)


def test_the_steering_property_checks_and_steers_the_next_replies(chat, tiny_model):
    from kerasllm_widget.chat.chat_state import ChatState

    hidden = tiny_model.backbone.hidden_dim
    for bad, problem in [
        ({5: np.zeros(hidden)}, r"steering layer 5 .* use 0\.\.1"),
        ({0: np.zeros(3)}, rf"steering\[0\] has shape \(3,\); .* \({hidden},\)"),
        ({0: np.full(hidden, np.nan)}, r"steering\[0\] holds NaN"),
    ]:
        with pytest.raises(ValueError, match=problem):
            chat.steering = bad
        assert chat.steering is None  # a refused value changes nothing
    with pytest.raises(TypeError, match="steering=list"):
        chat.steering = [np.zeros(hidden)]

    plain = chat.send("Tell me").result(timeout=120)
    vector = np.random.default_rng(0).standard_normal(hidden).astype(np.float32) * 8
    chat.steering = {1: vector}
    assert set(chat.steering) == {1} and chat.steering[1].dtype == np.float32
    steered = chat.send("Tell me").result(timeout=120)
    expected = ChatState(tiny_model, steering={1: vector}, escape_special_tokens=True)
    expected.messages[:] = [dict(m) for m in chat.chat_state.messages[:2]]
    assert steered == expected.send("Tell me", temperature=0.0, max_new_tokens=6)
    chat.steering = None
    assert chat.steering is None
    assert plain  # the unsteered reply was made with the same settings
    assert chat.history[1]["content"] == plain


def test_the_tab_computes_a_vector_and_answers_twice_without_recompiling(chat, tiny_model):
    view = RecordingFrontEnd(chat)
    info = view.answer(view.request("steer.open"), ("steer.info",))
    assert info["num_layers"] == 2 and info["vector"] is None and info["applied"] == []

    # Asking before a vector exists is answered, not raised.
    early = view.answer(view.request("steer.ask", question="Hi", strength=2), ("steer.error",))
    assert early["code"] == "not_ready" and "vector" in early["message"]

    positive, negative = ["good good good", "great fun"], ["bad bad bad", "awful day"]
    vector = view.answer(
        view.request("steer.compute", positive=positive, negative=negative, layer=1),
        ("steer.vector",),
    )
    from kerasllm_widget import inspect

    expected = inspect.steering_vector(tiny_model, positive, negative, layer=1)
    assert vector["layer"] == 1 and (vector["positive"], vector["negative"]) == (2, 2)
    assert vector["norm"] == pytest.approx(float(np.linalg.norm(expected)), rel=1e-5)

    def ask(strength: float) -> dict[str, str]:
        request_id = view.request("steer.ask", question="Tell me", strength=strength)
        _wait_for(
            lambda: any(
                m["which"] == "steered" and m["done"]
                for m in view.of_kind("steer.reply", request_id)
            ),
            timeout=240,
            what="the steered reply",
        )
        replies = view.of_kind("steer.reply", request_id)
        return {m["which"]: m["text"] for m in replies if m["done"]}

    engine = engine_for(tiny_model)
    first = ask(64.0)
    before = dict(engine.trace_counts)
    second = ask(-64.0)
    assert dict(engine.trace_counts) == before  # a new strength is a traced value
    assert first["plain"] == second["plain"]  # greedy: the unsteered reply does not move
    assert first["steered"] != first["plain"] or second["steered"] != second["plain"]

    # Apply to the chat, and off again.
    applied = view.answer(view.request("steer.apply", strength=2.0), ("steer.info",))
    assert applied["applied"] == [1]
    np.testing.assert_allclose(chat.steering[1], 2.0 * expected, rtol=1e-5)
    view.answer(view.request("steer.apply", strength=None), ("steer.info",))
    assert chat.steering is None


def test_stop_ends_a_long_ask_and_the_tab_goes_on(chat):
    view = RecordingFrontEnd(chat)
    view.answer(
        view.request("steer.compute", positive=["yes"], negative=["no"], layer=0),
        ("steer.vector",),
    )
    request_id = view.request("steer.ask", question="Go on", strength=1, max_new_tokens=1000)
    _wait_for(lambda: view.of_kind("steer.reply", request_id), what="the first reply tokens")
    view.request("steer.cancel")
    error = view.answer(request_id, ("steer.error",))
    assert error["code"] == "cancelled"
    _wait_for(lambda: not chat._worker.busy, what="the worker to be free")
    assert chat.send("Still there?").result(timeout=120) is not None


def test_compare_with_scores_the_conversation_and_continues_with_b(chat, tiny_model):
    from kerasllm_widget import inspect
    from tests.tiny_llama import tiny_causal_lm

    with pytest.raises(TypeError, match="other=int: give a Llama3CausalLM"):
        chat.compare_with(3)
    with pytest.raises(ValueError, match="tokens in its vocabulary"):
        chat.compare_with(tiny_causal_lm(seed=1, sequence_length=16))
    assert chat.compare == {}

    other = _tiny_chat_model(rope_max_wavelength=5000)  # same shapes and tokenizer, other weights
    chat.compare_with(other)
    assert set(chat.compare) == {"a", "b"}
    chat.send("Compare me").result(timeout=120)

    view = RecordingFrontEnd(chat)
    request_id = view.request("compare.request")
    result = view.answer(request_id, ("compare.result", "steer.error"))
    assert result["kind"] == "compare.result", result
    buffers = view.buffers[request_id]

    def array(name: str) -> np.ndarray:
        header = result["arrays"][name]
        return np.frombuffer(buffers[header["buffer"]], header["dtype"]).reshape(header["shape"])

    ids = array("token_ids")
    assert len(result["pieces"]) == ids.size == len(result["roles"])
    expected = inspect.compare_models(tiny_model, other, ids)
    np.testing.assert_allclose(
        array("logprobs_b") - array("logprobs_a"),
        expected.logprobs_b - expected.logprobs_a,
        atol=1e-5,
    )
    assert array("top_ids_a").shape == (ids.size, 5)
    assert all(str(int(i)) in result["labels"] for i in array("top_ids_b").ravel())

    position = ids.size // 2
    continued = view.request(
        "compare.continue", sequence_id=result["sequence_id"], position=position, max_new_tokens=5
    )
    _wait_for(
        lambda: any(m["done"] for m in view.of_kind("compare.continuation", continued)),
        what="B's continuation",
    )
    done = [m for m in view.of_kind("compare.continuation", continued) if m["done"]][-1]
    greedy = list(
        other.stream([int(i) for i in ids[: position + 1]], max_new_tokens=5, temperature=0.0)
    )
    assert done["text"] == greedy[-1].reply

    stale = view.answer(
        view.request("compare.continue", sequence_id="old", position=1), ("steer.error",)
    )
    assert stale["code"] == "not_ready"


def test_compare_view_scores_its_text(tiny_model):
    from kerasllm_widget import CompareView, inspect

    other = _tiny_chat_model(rope_max_wavelength=5000)
    view = CompareView(tiny_model, other, text="hello world")
    try:
        front = RecordingFrontEnd(view)
        result = front.answer(front.request("compare.request"), ("compare.result",))
        assert result["names"][0].startswith("tiny")
        comparison = view.comparison()
        assert isinstance(comparison, inspect.ModelComparison)
        assert len(result["pieces"]) == comparison.token_ids.size
    finally:
        view.close()
    with pytest.raises(TypeError, match="text=int"):
        CompareView(tiny_model, other, text=3)
