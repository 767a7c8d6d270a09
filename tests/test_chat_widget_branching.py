"""The chat panel's branches, kernel side: ``chat.branch`` continues a reply from one of its
tokens in place of it (its prefix first, with the reply's own token records), the transcript
shows ``siblings`` on every message that has some, ``chat.switch`` brings a sibling and its
continuation back (with the entries shown before), regenerate and edit make siblings too, and a
wrong request is answered at once without changing anything."""

from __future__ import annotations

import json
import threading

import pytest
from test_chat_widget import FrontEnd, _idle, _tiny_chat_model, _wait_for


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_chat_model()


@pytest.fixture
def chat(tiny_model):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    widget = ChatWidget(tiny_model, temperature=0.0, max_new_tokens=8, top_k_alternatives=3)
    yield widget
    widget.close()


def _streamed(view, request_id: str) -> list[dict]:
    """The token records of a request's reply, in order."""
    return [t for m in view.of_kind("chat.token", request_id) for t in m["tokens"]]


def test_a_branch_streams_in_place_of_the_reply_and_switch_brings_it_back(chat):
    view = FrontEnd(chat)
    first = view.request("chat.send", text="hello")
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", first), what="the reply")
    question, reply = [dict(e) for e in chat.transcript]
    tokens = _streamed(view, first)
    assert reply["state_id"] and question["state_id"] and "siblings" not in reply
    alternative = tokens[2]["top_k"][1]["token_id"]
    assert alternative != tokens[2]["token_id"]

    branch = view.request(
        "chat.branch", message_id=reply["id"], token_index=2, token_id=alternative, text=None
    )
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", branch), what="the branch")
    assert len(chat.transcript) == 2
    new = chat.transcript[1]
    assert new["id"] != reply["id"] and new["siblings"] == [1, 2]
    streamed = _streamed(view, branch)
    # The prefix comes first, with the reply's own records; then the chosen token.
    assert streamed[:2] == tokens[:2]
    assert [t["index"] for t in streamed] == list(range(len(streamed)))
    assert streamed[2]["token_id"] == alternative
    assert new["content"] == "".join(t["text"] for t in streamed)
    assert view.of_kind("chat.done", branch)[0]["text"] == new["content"]
    assert chat.history[1]["content"] == new["content"]

    chat.switch(new["id"], 0)
    shown = chat.transcript[1]
    assert shown["id"] == reply["id"] and shown["content"] == reply["content"]
    assert shown["siblings"] == [0, 2] and shown["stats"] == reply["stats"]
    assert chat.history[1]["content"] == reply["content"]
    view.request("chat.switch", message_id=shown["id"], index=1)
    _wait_for(lambda: chat.transcript[1]["id"] == new["id"], what="the switch back")

    # The JSON export asks for the whole tree: both siblings, with their token ids.
    asked = view.request("chat.export_tree")
    (tree,) = view.of_kind("chat.tree", asked)
    assert tree["document"] == chat.chat_state.to_json()
    assert len(json.loads(tree["document"])["branches"][0]["ids"]) == 2


def test_a_view_that_did_not_see_a_reply_stream_gets_its_tokens(chat):
    view = FrontEnd(chat)
    first = view.request("chat.send", text="hello")
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", first), what="the reply")
    reply = chat.transcript[1]
    asked = view.request("chat.get_tokens", message_id=reply["id"])
    (answer,) = view.of_kind("chat.tokens", asked)
    assert answer["reply_id"] == reply["id"] and answer["tokens"] == _streamed(view, first)

    # A reply the panel never streamed (a ChatState passed in with it): decoded from its ids.
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    other = ChatWidget(chat.chat_state)
    try:
        other.transcript = [{**e, "id": f"copy-{e['id']}"} for e in chat.transcript]
        other_view = FrontEnd(other)
        asked = other_view.request("chat.get_tokens", message_id=f"copy-{reply['id']}")
        (decoded,) = other_view.of_kind("chat.tokens", asked)
        assert [t["token_id"] for t in decoded["tokens"]] == [
            t["token_id"] for t in answer["tokens"]
        ]
        assert "".join(t["text"] for t in decoded["tokens"]) == reply["content"]
        assert all(t["logprob"] is None and t["top_k"] == [] for t in decoded["tokens"])
    finally:
        other.close()


def test_a_typed_continuation_and_regenerate_make_siblings_too(chat):
    view = FrontEnd(chat)
    chat.send("hello").result(timeout=180)
    reply = chat.transcript[1]
    branch = view.request(
        "chat.branch", message_id=reply["id"], token_index=1, token_id=None, text=" blue"
    )
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", branch), what="the branch")
    assert " blue" in chat.transcript[1]["content"]
    chat.regenerate().result(timeout=180)
    assert chat.transcript[1]["siblings"] == [2, 3]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"message_id": "nope", "token_index": 0}, "not a reply"),
        ({"token_index": 99}, "token_index=99"),
        ({"token_index": 1, "token_id": 10**7}, "token_id"),
    ],
)
def test_a_wrong_branch_is_answered_at_once_and_changes_nothing(chat, fields, match):
    view = FrontEnd(chat)
    chat.send("hello").result(timeout=180)
    before = [dict(e) for e in chat.transcript]
    request = {"message_id": before[1]["id"], "token_id": None, "text": None, **fields}
    sent = view.request("chat.branch", **request)
    (error,) = view.of_kind("chat.error", sent)
    assert error["code"] == "bad_request" and match in error["message"]
    assert chat.transcript == before
    with pytest.raises(ValueError, match="index from 0 to 0"):
        chat.switch(before[1]["id"], 1)


def test_stop_during_a_branch_keeps_what_it_said_as_a_sibling(chat):
    view = FrontEnd(chat)
    chat.send("hello").result(timeout=180)
    reply = chat.transcript[1]
    chat.max_new_tokens = 400
    reached, release = threading.Event(), threading.Event()

    def hold(event):  # the branch's first token of its own waits for the Stop
        reached.set()
        release.wait(60)

    chat.on_token(hold)
    branch = view.request(
        "chat.branch", message_id=reply["id"], token_index=2, token_id=None, text=None
    )
    assert reached.wait(180)
    view.request("chat.cancel")
    assert chat.transcript[1]["status"] == "cancelled"  # shown at once
    release.set()
    _wait_for(lambda: _idle(chat) and view.of_kind("chat.done", branch), what="the stop")
    new = chat.transcript[1]
    assert new["status"] == "cancelled" and new["stop_reason"] == "cancelled"
    assert new["siblings"] == [1, 2]
    assert len(chat.chat_state.token_ids(new["state_id"])) < 2 + 400
