"""The inspector widgets' kernel side, driven through their comms as the JS views drive them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from inspect_support import FrontEnd, decode, tiny_chat_model

from kerasllm_widget import inspect
from kerasllm_widget.widgets import inspect_protocol as P

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The cat sat on the mat. The dog slept."


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model()


def test_protocol_kinds_match_the_typescript_mirror():
    source = (ROOT / "js" / "shared" / "inspect_protocol.ts").read_text(encoding="utf-8")

    def block(name: str) -> set[str]:
        body = re.search(rf"export const {name} = \{{(.*?)\}} as const", source, re.S)
        assert body is not None, f"{name} not found in inspect_protocol.ts"
        return set(re.findall(r'"([a-z]+\.[a-z_]+)"', body.group(1)))

    assert block("REQUEST") == set(P.REQUEST_KINDS)
    assert block("RESPONSE") == set(P.RESPONSE_KINDS)
    actions = re.search(r"export const STEP_ACTIONS = \[(.*?)\] as const", source, re.S).group(1)
    assert tuple(re.findall(r'"([a-z]+)"', actions)) == P.STEP_ACTIONS


@pytest.mark.parametrize(
    "message, problem",
    [
        ({"kind": "attention.request", "id": "a", "sequence_id": "s", "layer": 0}, "'head'"),
        (
            {"kind": "attention.request", "id": "a", "sequence_id": "s", "layer": True, "head": 0},
            "'layer'",
        ),
        (
            {"kind": "attention.request", "id": "a", "sequence_id": "s", "layer": 0, "head": "max"},
            "'mean'",
        ),
        ({"kind": "step.request", "id": "a", "action": "jump"}, "unknown step action"),
        (
            {"kind": "preprocess.request", "id": "a", "sequence_length": 4, "texts": [1]},
            "list of strings",
        ),
        ({"kind": "attention.nope", "id": "a"}, "unknown message kind"),
        ({"kind": "tokens.request", "text": "x"}, "'id'"),
    ],
)
def test_requests_are_checked(message, problem):
    with pytest.raises(P.ProtocolError, match=problem):
        P.parse_request(message)


def test_token_inspector_answers_with_tables_and_compares(llama32_instruct_tokenizer, smollm2_gguf):
    from kerasllm_widget.widgets.token_inspector import TokenInspector

    widget = TokenInspector(
        llama32_instruct_tokenizer, text="Hello", compare_with=str(smollm2_gguf)
    )
    front = FrontEnd(widget)
    answer, _ = front.ask(P.TOKENS_REQUEST, text=None)
    assert answer["kind"] == P.TOKENS_RESULT and answer["text"] == "Hello"
    llama, smol = answer["tables"]
    assert [p["id"] for p in llama["pieces"]] == [9906]  # the seed's figure
    assert [p["id"] for p in smol["pieces"]] == [19556]
    assert answer["labels"][1].endswith(".gguf")
    answer, _ = front.ask(P.TOKENS_REQUEST, text="Hello world\n", compare=False)
    assert len(answer["tables"]) == 1
    assert [p["piece"] for p in answer["tables"][0]["pieces"]] == ["Hello", "␣world", "↵"]
    answer, _ = front.ask(P.PREPROCESS_REQUEST, texts=["Hello", "Hi!"], sequence_length=6)
    rows = answer["table"]["rows"]
    assert rows[0]["token_ids"] == [128000, 9906, 128009, 0, 0, 0]
    assert rows[1]["token_kinds"] == ["start", "text", "text", "end", "pad", "pad"]
    assert widget.table.ids.tolist() == [9906]
    widget.close()


def test_preprocessor_inspector_answers_for_its_texts_and_refuses_bad_lengths(
    llama32_instruct_tokenizer,
):
    from kerasllm_widget.widgets.preprocessor_inspector import PreprocessorInspector

    widget = PreprocessorInspector(llama32_instruct_tokenizer, ["Hello", "Hi!"], sequence_length=6)
    front = FrontEnd(widget)
    answer, _ = front.ask(P.PREPROCESS_REQUEST, texts=None, sequence_length=6)
    assert answer["kind"] == P.PREPROCESS_RESULT
    assert answer["table"]["rows"][0]["labels"] == [9906, 128009, 0, 0, 0, 0]
    answer, _ = front.ask(P.PREPROCESS_REQUEST, texts=["Hello"], sequence_length=0)
    assert answer["kind"] == P.INSPECT_ERROR and "sequence_length" in answer["message"]
    with pytest.raises(Exception, match="sequence_length"):
        widget.sequence_length = 0
    assert widget.table.token_ids.shape == (2, 6)
    widget.close()


def test_attention_view_sends_quantised_maps_of_the_asked_head(tiny):
    from kerasllm_widget.widgets.attention_view import AttentionView

    widget = AttentionView(tiny, text=TEXT)
    front = FrontEnd(widget)
    opened, _ = front.ask(P.ATTENTION_OPEN, text=None)
    assert opened["kind"] == P.ATTENTION_SEQUENCE
    assert (opened["num_layers"], opened["num_heads"]) == (2, 8)
    ids = inspect.tokens(tiny, TEXT).ids
    assert opened["length"] == len(ids) + 1  # with the start token
    assert opened["pieces"][0] == "<|begin_of_text|>"
    expected = widget.maps().layer(1)
    answer, buffers = front.ask(
        P.ATTENTION_REQUEST, sequence_id=opened["sequence_id"], layer=1, head=3
    )
    assert answer["kind"] == P.ATTENTION_RESULT and answer["array"]["dtype"] == "uint8"
    assert len(buffers[0]) == opened["length"] ** 2  # one byte per value
    decoded = decode(answer["array"], buffers)
    step = answer["array"]["scale"] * 2 / 255  # a code step of the square-root code, at worst
    assert np.abs(decoded - expected[3]).max() <= step
    answer, buffers = front.ask(
        P.ATTENTION_REQUEST, sequence_id=opened["sequence_id"], layer=1, head="mean"
    )
    assert np.abs(decode(answer["array"], buffers) - expected.mean(0)).max() <= step
    # Answers about an older sequence are refused, so a view never draws a stale map.
    answer, _ = front.ask(P.ATTENTION_REQUEST, sequence_id="old", layer=0, head=0)
    assert answer["kind"] == P.INSPECT_ERROR and answer["code"] == P.ERROR_SUPERSEDED
    answer, _ = front.ask(P.ATTENTION_REQUEST, sequence_id=opened["sequence_id"], layer=5, head=0)
    assert answer["kind"] == P.INSPECT_ERROR and answer["code"] == P.ERROR_FAILED
    assert "layer 5" in answer["message"]
    widget.close()


def test_attention_overview_streams_every_layer_and_yields_to_clicks(tiny):
    from kerasllm_widget.widgets.attention_view import AttentionView

    widget = AttentionView(tiny, text=TEXT * 3)
    front = FrontEnd(widget)
    opened, _ = front.ask(P.ATTENTION_OPEN, text=None)
    overview = front.request(P.ATTENTION_OVERVIEW, sequence_id=opened["sequence_id"], size=16)
    click = front.request(P.ATTENTION_REQUEST, sequence_id=opened["sequence_id"], layer=0, head=1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(front.answers(overview)) < 2:
        widget.wait_idle(5)
    kinds = [m["kind"] for m, _ in front.messages]
    thumbnails = [(m, b) for m, b in front.answers(overview)]
    assert [m["layer"] for m, _ in thumbnails] == [0, 1]
    # The click was answered between the two layers of the overview, not after them.
    assert kinds.index(P.ATTENTION_RESULT) < len(kinds) - 1
    assert front.answers(click)[0][0]["kind"] == P.ATTENTION_RESULT
    header = thumbnails[0][0]["array"]
    assert header["shape"][0] == 8 and header["shape"][1] <= 16 and len(header["scale"]) == 8
    maps = widget.maps()
    assert np.allclose(
        decode(header, thumbnails[0][1]).max(axis=(1, 2)), maps.layer(0).max(axis=(1, 2)), atol=1e-6
    )
    widget.close()


def test_probabilities_view_scores_the_text(tiny):
    from kerasllm_widget.widgets.probabilities_view import ProbabilitiesView

    widget = ProbabilitiesView(tiny, text=TEXT)
    front = FrontEnd(widget)
    answer, buffers = front.ask(P.PROBABILITIES_REQUEST)
    arrays = {name: decode(h, buffers) for name, h in answer["arrays"].items()}
    expected = widget.scores()
    assert arrays["token_ids"].tolist() == expected.token_ids.tolist()
    assert arrays["probs"][0] == -1  # the first token has no prediction
    assert np.allclose(arrays["probs"][1:], expected.probs[1:], atol=1e-6)
    assert np.allclose(arrays["entropy"][1:], expected.entropy[1:], atol=1e-5)
    assert arrays["top_ids"].shape == (len(expected.token_ids), 5)
    assert set(answer["labels"]) >= {str(i) for i in arrays["top_ids"][1:].ravel()}
    widget.close()


def test_step_mode_follows_the_users_choice(tiny):
    from kerasllm_widget.widgets.probabilities_view import ProbabilitiesView

    widget = ProbabilitiesView(tiny, text="The cat", temperature=0.0, max_new_tokens=6)
    front = FrontEnd(widget)
    state, _ = front.ask(P.STEP_REQUEST, action="start")
    assert state["kind"] == P.STEP_STATE and state["steps"] == []
    distribution = state["distribution"]
    # Greedy settings: the sampler proposes the most likely token.
    assert state["proposal"]["token_id"] == distribution["token_ids"][0]
    unlikely = distribution["token_ids"][-1]
    state, _ = front.ask(P.STEP_REQUEST, action="choose", token_id=unlikely)
    step = state["steps"][0]
    assert step["token_id"] == unlikely and step["chosen_by"] == "user"
    assert step["prob"] == pytest.approx(distribution["probs"][-1], rel=1e-4)
    # The next distribution follows from the chosen token, not from the sampler's.
    session = inspect.StepSession(tiny, np.r_[front_prompt(widget), unlikely])
    assert state["distribution"]["token_ids"] == session.distribution().token_ids.tolist()
    state, _ = front.ask(P.STEP_REQUEST, action="accept")
    assert len(state["steps"]) == 2 and state["steps"][1]["chosen_by"] == "sampler"
    state, _ = front.ask(P.STEP_REQUEST, action="undo")
    assert len(state["steps"]) == 1
    state, _ = front.ask(P.STEP_REQUEST, action="finish")
    assert state["finished"] or len(state["steps"]) == 6
    assert all(s["chosen_by"] == "sampler" for s in state["steps"][1:])
    state, _ = front.ask(P.STEP_REQUEST, action="choose", token_id=10**9)
    assert state["kind"] == P.INSPECT_ERROR and "vocabulary" in state["message"]
    widget.close()


def front_prompt(widget):
    return widget.source.prompt_ids(widget.text)


def test_views_follow_a_chat_conversation(tiny):
    from kerasllm_widget.widgets.attention_view import AttentionView
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget(tiny, temperature=0.0, max_new_tokens=5)
    view = AttentionView(chat=chat)
    front = FrontEnd(view)
    before = view.revision
    chat.send("Hello!").result(timeout=120)
    deadline = time.monotonic() + 10
    while view.revision == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert view.revision > before
    opened, _ = front.ask(P.ATTENTION_OPEN, text=None)
    roles = set(opened["roles"])
    assert {"user", "assistant", "template"} <= roles
    user_pieces = [p for p, r in zip(opened["pieces"], opened["roles"], strict=True) if r == "user"]
    assert "".join(user_pieces).replace("␣", " ") == "Hello!"
    view.close()
    chat.close()


def test_chat_widget_answers_its_inspector_tabs(tiny):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget(tiny, temperature=0.0, max_new_tokens=4)
    chat.send("Hi there").result(timeout=120)
    front = FrontEnd(chat, wait_idle=chat._inspectors.wait_idle)
    opened, _ = front.ask(P.ATTENTION_OPEN, text=None)
    assert {"user", "assistant"} <= set(opened["roles"])
    answer, buffers = front.ask(
        P.ATTENTION_REQUEST, sequence_id=opened["sequence_id"], layer=0, head=0
    )
    assert answer["kind"] == P.ATTENTION_RESULT and len(buffers[0]) == opened["length"] ** 2
    answer, _ = front.ask(P.TOKENS_REQUEST, text=None)
    assert answer["text"].count("Hi there") == 1  # the conversation, as the template renders it
    # The step mode continues the conversation: its prompt ends with the assistant's header.
    state, _ = front.ask(P.STEP_REQUEST, action="start", text=None)
    assert state["prompt_length"] > opened["length"] and state["distribution"] is not None
    # The chat's own messages still reach the chat.
    request_id = front.request("chat.sync")
    deadline = time.monotonic() + 10
    while not front.answers(request_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert front.answers(request_id)[0][0]["kind"] == "chat.snapshot"
    chat.close()


def test_opening_a_sequence_runs_its_forward_pass_in_the_background(tiny):
    from kerasllm_widget.widgets.attention_view import AttentionView

    widget = AttentionView(tiny, text=TEXT)
    front = FrontEnd(widget)
    opened, _ = front.ask(P.ATTENTION_OPEN, text=None)
    # No map asked for yet: the pass runs on its own and says how far it has come.
    deadline = time.monotonic() + 60
    while widget.service._maps is None or widget.service._maps.prepared_layers < 2:
        assert time.monotonic() < deadline, "the forward pass did not run in the background"
        time.sleep(0.05)
    assert widget.wait_idle(30)
    progress = [m for m, _ in front.messages if m["kind"] == P.ATTENTION_PROGRESS]
    assert progress and progress[-1]["ready_layers"] == progress[-1]["num_layers"] == 2
    assert {m["sequence_id"] for m in progress} == {opened["sequence_id"]}
    assert all(m["id"] == "" for m in progress)  # not an answer to any request
    answer, buffers = front.ask(
        P.ATTENTION_REQUEST, sequence_id=opened["sequence_id"], layer=1, head=0
    )
    assert answer["kind"] == P.ATTENTION_RESULT
    expected = widget.maps().head(1, 0)
    assert np.abs(decode(answer["array"], buffers) - expected).max() < 0.02
    widget.close()


def test_a_chat_that_grew_prepares_its_attention_reusing_the_old_pass(tiny):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget(tiny, temperature=0.0, max_new_tokens=40)
    service = chat._inspectors
    chat.send("Tell me a long story about a cat " * 12).result(timeout=120)
    front = FrontEnd(chat, wait_idle=service.wait_idle)
    first, _ = front.ask(P.ATTENTION_OPEN, text=None)
    assert first["length"] > 256  # past one chunk, so a shared prefix can be skipped
    chat.send("And then?").result(timeout=120)
    # Nobody asked: the conversation change alone starts the pass over the new conversation.
    deadline = time.monotonic() + 60
    while not any(
        m["kind"] == P.ATTENTION_PROGRESS
        and m["sequence_id"] != first["sequence_id"]
        and m["ready_layers"] == m["num_layers"]
        for m, _ in front.messages
    ):
        assert time.monotonic() < deadline, "the grown conversation was not prepared"
        time.sleep(0.05)
    assert service.wait_idle(30)
    maps = service._maps
    assert maps is not None and maps.length > first["length"]
    assert maps.reused_tokens >= 256
    fresh = inspect.AttentionMaps(tiny, maps.token_ids[0])
    assert np.abs(maps.layer(1) - fresh.layer(1)).max() < 1e-5
    chat.close()


def test_attention_view_sends_an_overview_then_regions_at_full_resolution(tiny):
    from kerasllm_widget.inspect import block_max
    from kerasllm_widget.widgets.attention_view import AttentionView

    widget = AttentionView(tiny, text=TEXT * 4)
    front = FrontEnd(widget)
    opened, _ = front.ask(P.ATTENTION_OPEN, text=None)
    length = opened["length"]
    assert 64 < length <= 128  # padded to 128: blocks of 4 tokens for 32 cells
    sequence_id = opened["sequence_id"]
    full = widget.maps().quantized(1, 3).codes
    answer, buffers = front.ask(
        P.ATTENTION_REQUEST, sequence_id=sequence_id, layer=1, head=3, cells=32
    )
    assert answer["kind"] == P.ATTENTION_RESULT and answer["block"] == 4
    assert answer["region"] is None
    side = -(-length // 4)
    assert answer["array"]["shape"] == [side, side] and len(buffers[0]) == side * side
    codes = np.frombuffer(bytes(buffers[answer["array"]["buffer"]]), np.uint8).reshape(side, side)
    np.testing.assert_array_equal(codes, block_max(full, 4))
    row_max = answer["row_max"]
    assert row_max["shape"] == [length]
    np.testing.assert_array_equal(
        np.frombuffer(bytes(buffers[row_max["buffer"]]), np.uint8), full.max(axis=1)
    )
    answer, buffers = front.ask(
        P.ATTENTION_REQUEST, sequence_id=sequence_id, layer=1, head=3, region=[10, 30, 5, 25]
    )
    assert answer["region"] == [10, 30, 5, 25] and answer["block"] == 1
    codes = np.frombuffer(bytes(buffers[0]), np.uint8).reshape(20, 20)
    np.testing.assert_array_equal(codes, full[10:30, 5:25])
    answer, _ = front.ask(
        P.ATTENTION_REQUEST, sequence_id=sequence_id, layer=1, head=3, region=[10, 5, 0, 4]
    )
    assert answer["kind"] == P.INSPECT_ERROR and answer["code"] == P.ERROR_BAD_REQUEST
    widget.close()
