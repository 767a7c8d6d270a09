"""ChatState branching: a reply continued from a token prefix becomes a sibling; switching between
siblings brings their own continuations; a branch prefills only the new tokens; a failed or
closed branch changes nothing; the JSON export keeps the whole tree."""

from __future__ import annotations

import json

import pytest
from tiny_llama import tiny_causal_lm

from kerasllm_widget.chat.chat_state import ChatState
from kerasllm_widget.generation.events import DoneEvent, TokenEvent

GREEDY = {"temperature": 0.0}
K = 3


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm(seed=4)


def _answered(model):
    """A chat with one greedy turn, its reply's token events and its `DoneEvent`."""
    chat = ChatState(model)
    events = list(chat.stream("hello", max_new_tokens=8, top_k_alternatives=3, **GREEDY))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and len(done.token_ids) > K + 1
    return chat, tokens, done


def _state(chat):
    return json.loads(chat.to_json())


def _done(events) -> DoneEvent:
    events = list(events)
    assert isinstance(events[-1], DoneEvent)
    return events[-1]


def test_messages_have_ids_and_replies_remember_their_token_ids(model):
    chat, _, done = _answered(model)
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]
    assert len({m["id"] for m in chat.messages}) == 2
    reply = chat.messages[1]
    assert reply["content"] == done.reply
    assert chat.token_ids(reply["id"]) == done.token_ids
    assert chat.token_ids(chat.messages[0]["id"]) is None
    # The template still reads only role and content.
    assert reply["id"] not in chat.prompt


def test_branch_with_the_second_best_token_continues_from_the_prefix(model):
    chat, tokens, done = _answered(model)
    original = dict(chat.messages[1])
    alternative = tokens[K].top_k[1].token_id
    assert alternative != done.token_ids[K]
    branch_done = _done(chat.branch(original["id"], K, alternative, max_new_tokens=6, **GREEDY))

    new = chat.messages[1]
    assert len(chat.messages) == 2 and new["id"] != original["id"]
    ids = chat.token_ids(new["id"])
    assert ids[: K + 1] == [*done.token_ids[:K], alternative]
    assert ids[K + 1 :] == branch_done.token_ids
    assert new["content"] == model.tokenizer.detokenize(ids)

    # Only the branch point and the chosen token were new to the kept cache.
    assert branch_done.prompt_tokens > 10
    assert branch_done.prefilled_tokens <= 2


def test_branch_without_a_token_greedily_repeats_the_reply(model):
    chat, _, done = _answered(model)
    first = chat.messages[1]["id"]
    rest = len(done.token_ids) - K
    branch_done = _done(chat.branch(first, K, max_new_tokens=rest, **GREEDY))
    assert chat.token_ids(chat.messages[1]["id"]) == done.token_ids
    assert branch_done.prefilled_tokens <= 2 < branch_done.prompt_tokens


def test_branches_and_switch_move_between_siblings_and_what_follows(model):
    chat, tokens, _ = _answered(model)
    first = dict(chat.messages[1])
    chat.send("and then?", max_new_tokens=3, **GREEDY)
    first_path = [dict(m) for m in chat.messages]
    assert len(first_path) == 4

    alternative = tokens[K].top_k[1].token_id
    _done(chat.branch(first["id"], K, alternative, max_new_tokens=4, **GREEDY))
    second = dict(chat.messages[1])
    assert len(chat.messages) == 2  # the branch has no continuation yet
    siblings = chat.branches(second["id"])
    assert siblings["index"] == 1
    assert [m["id"] for m in siblings["messages"]] == [first["id"], second["id"]]
    assert siblings["messages"][0]["content"] == first["content"]
    assert chat.branches(first["id"]) == siblings  # asked through a hidden sibling

    chat.send("more", max_new_tokens=3, **GREEDY)
    second_path = [dict(m) for m in chat.messages]

    assert chat.switch(second["id"], 0) == first_path
    assert chat.messages == first_path and chat.branches(first["id"])["index"] == 0
    chat.switch(first["id"], 1)
    assert chat.messages == second_path
    with pytest.raises(IndexError, match="use 0 to 1"):
        chat.switch(first["id"], 2)
    assert chat.messages == second_path


def test_a_branch_of_a_branch_joins_the_same_siblings(model):
    chat, tokens, _ = _answered(model)
    first = chat.messages[1]["id"]
    _done(chat.branch(first, K, tokens[K].top_k[1].token_id, max_new_tokens=3, **GREEDY))
    _done(chat.branch(chat.messages[1]["id"], 1, max_new_tokens=3, **GREEDY))
    siblings = chat.branches(first)
    assert siblings["index"] == 2 and len(siblings["messages"]) == 3


def test_a_closed_or_failing_branch_leaves_everything_as_it_was(model, monkeypatch):
    chat, _, _ = _answered(model)
    chat.send("and then?", max_new_tokens=3, **GREEDY)
    reply = chat.messages[1]["id"]
    before, tree = [dict(m) for m in chat.messages], _state(chat)

    events = chat.branch(reply, K, max_new_tokens=8, **GREEDY)
    assert isinstance(next(events), TokenEvent)
    events.close()
    assert chat.messages == before and _state(chat) == tree

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("the device went away")

    monkeypatch.setattr("kerasllm_widget.chat.chat_state.stream_ids", broken)
    with pytest.raises(RuntimeError, match="device went away"):
        list(chat.branch(reply, K, max_new_tokens=4))
    assert chat.messages == before and _state(chat) == tree


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        (("nope", 0), KeyError, "not a message"),
        (("user", 0), ValueError, "not an assistant reply"),
        (("reply", 99), IndexError, "token_index=99"),
        (("reply", 1, 10**6), ValueError, "token_id"),
    ],
)
def test_wrong_branch_arguments_raise_at_once_and_change_nothing(model, arguments, error, match):
    chat, _, _ = _answered(model)
    names = {"user": chat.messages[0]["id"], "reply": chat.messages[1]["id"]}
    message_id, *rest = arguments
    before, tree = [dict(m) for m in chat.messages], _state(chat)
    with pytest.raises(error, match=match):
        chat.branch(names.get(message_id, message_id), *rest)
    assert chat.messages == before and _state(chat) == tree


def test_json_round_trip_keeps_the_tree(model):
    chat, tokens, _ = _answered(model)
    first = chat.messages[1]["id"]
    chat.send("and then?", max_new_tokens=3, **GREEDY)
    _done(chat.branch(first, K, tokens[K].top_k[1].token_id, max_new_tokens=4, **GREEDY))
    text = chat.to_json()

    copy = ChatState.from_json(model, text)
    assert copy.to_json() == text
    assert copy.messages == chat.messages
    assert copy.branches(first) == chat.branches(first)
    assert copy.switch(first, 0) == chat.switch(first, 0)
    assert len(copy.messages) == 4
    assert copy.token_ids(first) == chat.token_ids(first)
    with pytest.raises(ValueError, match="Not a chat tree"):
        ChatState.from_json(model, json.dumps({"messages": []}))


def test_markdown_of_the_visible_path(model):
    chat, _, _ = _answered(model)
    chat.system_prompt = "Be brief."
    text = chat.to_markdown(title="tiny")
    assert text.startswith("# Chat with tiny\n\n**System prompt**\n\n> Be brief.\n")
    assert "## User\n\nhello\n" in text and "## Assistant" in text


def test_regenerate_keeps_the_old_reply_as_a_sibling(model):
    chat, _, done = _answered(model)
    first = dict(chat.messages[1])
    _done(chat.regenerate(max_new_tokens=4, temperature=1.0, seed=3))
    second = dict(chat.messages[1])
    assert len(chat.messages) == 2 and second["id"] != first["id"]
    siblings = chat.branches(second["id"])
    assert siblings["index"] == 1
    assert [m["id"] for m in siblings["messages"]] == [first["id"], second["id"]]
    assert chat.switch(second["id"], 0)[1] == first
    assert chat.token_ids(first["id"]) == done.token_ids


def test_edit_keeps_the_old_question_and_its_continuation_as_a_sibling(model):
    chat, _, _ = _answered(model)
    chat.send("and then?", max_new_tokens=3, **GREEDY)
    old_path = [dict(m) for m in chat.messages]
    _done(chat.edit(2, "and after that?", max_new_tokens=3, **GREEDY))
    assert [m["content"] for m in chat.messages[:3]] == [
        "hello",
        old_path[1]["content"],
        "and after that?",
    ]
    new_question = chat.messages[2]["id"]
    assert chat.branches(new_question)["index"] == 1
    assert chat.switch(new_question, 0) == old_path


def test_a_failing_regenerate_or_edit_leaves_messages_and_tree_as_they_were(model, monkeypatch):
    chat, tokens, _ = _answered(model)
    _done(chat.branch(chat.messages[1]["id"], K, tokens[K].top_k[1].token_id, max_new_tokens=3))
    chat.send("and then?", max_new_tokens=3, **GREEDY)
    before, tree = [dict(m) for m in chat.messages], _state(chat)

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("the device went away")

    monkeypatch.setattr("kerasllm_widget.chat.chat_state.stream_ids", broken)
    for events in (chat.regenerate(), chat.edit(0, "hi"), chat.edit(2, "and?")):
        with pytest.raises(RuntimeError, match="device went away"):
            list(events)
        assert chat.messages == before and _state(chat) == tree


def test_truncate_and_undo_take_the_branches_hanging_from_what_they_remove(model):
    chat, tokens, _ = _answered(model)
    first = chat.messages[1]["id"]
    _done(chat.branch(first, K, tokens[K].top_k[1].token_id, max_new_tokens=3, **GREEDY))
    chat.send("and then?", max_new_tokens=3, **GREEDY)
    _done(chat.regenerate(max_new_tokens=3, temperature=1.0, seed=1))
    assert len(_state(chat)["branches"]) == 2

    chat.undo()  # the second exchange and the regenerated reply's sibling
    state = _state(chat)
    assert len(chat.messages) == 2 and len(state["branches"]) == 1
    assert chat.branches(first)["index"] == 1  # the first reply's branches stay

    chat.truncate(1)  # the reply and both of its siblings
    state = _state(chat)
    assert state["branches"] == [] and state["token_ids"] == {}
    with pytest.raises(KeyError, match="not a message"):
        chat.switch(first, 0)


def test_a_branch_typed_by_the_user_continues_after_the_typed_tokens(model):
    chat, _, done = _answered(model)
    typed = model.tokenizer.tokenize(" blue")
    branch_done = _done(chat.branch(chat.messages[1]["id"], 2, text=" blue", max_new_tokens=3))
    ids = chat.token_ids(chat.messages[1]["id"])
    assert ids[: 2 + len(typed)] == [*done.token_ids[:2], *typed]
    assert branch_done.prefilled_tokens <= len(typed) + 1
    with pytest.raises(ValueError, match="give one of them"):
        chat.branch(chat.messages[1]["id"], 1, 5, text="x")
    with pytest.raises(ValueError, match="text=''"):
        chat.branch(chat.messages[1]["id"], 1, text="")


def test_a_branch_at_token_200_prefills_only_its_new_tokens(model):
    chat = ChatState(model)
    done = _done(chat.stream("hello", max_new_tokens=210, **GREEDY))
    assert len(done.token_ids) == 210
    reply = chat.messages[1]["id"]
    branch_done = _done(chat.branch(reply, 200, 7, max_new_tokens=4, **GREEDY))
    assert branch_done.prompt_tokens > 200
    # The kept cache holds the prompt and the first 200 tokens: only the chosen one is new
    # (and the last kept position, which the engine recomputes for its logits).
    assert branch_done.prefilled_tokens <= 2
