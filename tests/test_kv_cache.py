"""The key/value cache of a chat as the engine holds it (`inspect.kv_cache`) and the Cache tab's
kernel side, on a random-weight Llama with a real tokenizer and chat template."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from inspect_support import FrontEnd, decode, tiny_chat_model

from kerasllm_widget import inspect
from kerasllm_widget.chat.chat_state import ChatState
from kerasllm_widget.generation.events import DoneEvent
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.inspect.key_value_cache import GENERATED, PREFILLED, REUSED
from kerasllm_widget.widgets import kv_cache_protocol as P

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model()


def _turn(chat: ChatState, text: str, on_first_token=None) -> DoneEvent:
    events = []
    for event in chat.stream(text, max_new_tokens=6, temperature=0.0):
        if not events and on_first_token is not None:
            on_first_token()
        events.append(event)
    assert isinstance(events[-1], DoneEvent)
    return events[-1]


def _slots(cache, label: str) -> np.ndarray:
    index = [m["label"] for m in cache.messages].index(label)
    return np.flatnonzero(cache.message == index)


def test_second_turn_reuses_the_first_turns_slots_as_the_engine_recorded(tiny):
    chat = ChatState(tiny, system_prompt="Be brief.")
    first = _turn(chat, "Hello there")
    cache = inspect.kv_cache(chat)
    assert cache.counts == {
        "reused": 0,
        "prefilled": first.prompt_tokens,
        "generated": cache.used - first.prompt_tokens,
    }
    assert [m["label"] for m in cache.messages] == ["system", "user 1", "assistant 1"]
    first_slots = {label: _slots(cache, label) for label in ("system", "user 1")}

    streaming = []
    second = _turn(chat, "And again", lambda: streaming.append(inspect.kv_cache(chat)))
    # While the reply streams: the prompt is in, the reply's slots come as tokens arrive.
    (running,) = streaming
    assert running.running and running.used == second.prompt_tokens
    assert running.messages[-1]["label"] == "assistant 2"
    assert running.reused_tokens == second.prompt_tokens - second.prefilled_tokens
    cache = inspect.kv_cache(chat)
    record = engine_for(tiny).last_request
    # The engine's own numbers: what it took from the kept cache and what prefill computed.
    assert (
        cache.reused_tokens
        == record.reused_tokens
        == second.prompt_tokens - second.prefilled_tokens
    )
    assert cache.counts["prefilled"] == second.prefilled_tokens
    assert cache.reused_tokens >= first.prompt_tokens  # turn 1's prompt at least, if not its reply
    for label, slots in first_slots.items():
        assert np.array_equal(_slots(cache, label), slots)
        assert (cache.source[slots] == REUSED).all()
    user2 = _slots(cache, "user 2")
    assert (cache.source[user2] == PREFILLED).all()
    assert (cache.source[second.prompt_tokens :] == GENERATED).all()
    # The cache holds what the engine keeps: the prompt, then the reply as it was generated.
    assert cache.token_ids.tolist() == list(record.held_ids)
    assert cache.token_ids[: second.prompt_tokens].tolist() == chat.prompt_ids(chat.messages[:-1])
    # Text is content; headers and special tokens are the template's.
    assert "".join(np.array(cache.pieces)[user2][~cache.template[user2]]) == "And␣again"
    assert cache.template[user2].any()
    assert "2 reused" not in cache.summary() and "user 2" in cache.summary()


def test_a_full_context_drops_old_turns_and_keeps_the_system_prompt(tiny):
    chat = ChatState(tiny, system_prompt="Be brief.", context_length=64)
    for text in ("First question here", "Second question", "Third one"):
        _turn(chat, text)
    cache = inspect.kv_cache(chat)
    assert cache.dropped, "a 64-token context holds three turns"
    assert cache.dropped[0]["label"] == "user 1"
    assert cache.dropped[0]["content"] == "First question here"
    assert [m["content"] for m in chat.dropped_messages] == [m["content"] for m in cache.dropped]
    assert cache.messages[0]["role"] == "system" and _slots(cache, "system").size > 0
    assert "user 1" not in [m["label"] for m in cache.messages]
    assert cache.used <= 64
    chat.reset()
    assert inspect.kv_cache(chat).dropped == []


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bytes_per_token_is_the_formula_on_the_cache_arrays(tiny, dtype):
    from kerasllm_widget.generation.kept_cache import CacheRecord

    backbone = tiny.backbone
    shape = (1, 32, backbone.num_key_value_heads, backbone.head_dim)
    arrays = [(np.zeros(shape, dtype), np.zeros(shape, dtype))] * backbone.num_layers
    record = CacheRecord.of(arrays, [[1, 2, 3]], 0)
    itemsize = np.dtype(dtype).itemsize
    expected = backbone.num_layers * 2 * backbone.num_key_value_heads * backbone.head_dim * itemsize
    assert record.bytes_per_token == expected and record.capacity == 32
    # And on the engine's real cache after a turn.
    chat = ChatState(tiny)
    _turn(chat, "Hi")
    cache = inspect.kv_cache(chat)
    engine = engine_for(tiny)
    real = backbone.num_layers * 2 * backbone.num_key_value_heads * backbone.head_dim
    assert cache.bytes_per_token == real * np.dtype(engine.cache_dtype).itemsize
    assert cache.capacity == engine.kept_cache_length() >= cache.used
    assert cache.total_bytes == cache.bytes_per_token * cache.capacity


def test_chat_widget_answers_the_cache_tab(tiny):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget(tiny, temperature=0.0, max_new_tokens=4)
    front = FrontEnd(chat, wait_idle=chat._cache_view.wait_idle)
    chat.send("Hi there").result(timeout=120)
    answer, buffers = front.ask(P.CACHE_REQUEST)
    assert answer["kind"] == P.CACHE_RESULT
    ids = decode(answer["arrays"]["token_ids"], buffers)
    assert ids.tolist() == list(engine_for(tiny).last_request.held_ids)
    assert answer["cache"]["used"] == ids.size == len(answer["cache"]["pieces"])
    source = decode(answer["arrays"]["source"], buffers)
    assert set(source.tolist()) <= {REUSED, PREFILLED, GENERATED}
    request_id = front.request("cache.nonsense")
    assert front.answers(request_id)[0][0]["kind"] == P.CACHE_ERROR
    chat.close()


def test_protocol_kinds_match_the_typescript_mirror():
    source = (ROOT / "js" / "kv_cache" / "protocol.ts").read_text(encoding="utf-8")

    def block(name: str) -> set[str]:
        body = re.search(rf"export const {name} = \{{(.*?)\}} as const", source, re.S)
        assert body is not None, f"{name} not found in protocol.ts"
        return set(re.findall(r'"([a-z]+\.[a-z_]+)"', body.group(1)))

    assert block("REQUEST") == set(P.REQUEST_KINDS)
    assert block("RESPONSE") == set(P.RESPONSE_KINDS)


def test_another_chat_on_the_same_model_takes_the_cache(tiny):
    first = ChatState(tiny, system_prompt="Be brief.")
    _turn(first, "Hello there")
    other = ChatState(tiny, system_prompt="Be brief.")
    _turn(other, "Something else entirely")
    # The engine keeps one cache per model: it now holds the other chat's conversation.
    cache = inspect.kv_cache(first)
    assert cache.token_ids.tolist() == list(engine_for(tiny).last_request.held_ids)
    assert (cache.message[_slots(cache, "system")] == 0).all()
    assert (cache.message[_slots(cache, "system")[-1] + 1 :] == -1).all()
    # Its next turn reuses what the two share: the system prompt.
    second = _turn(first, "And again")
    cache = inspect.kv_cache(first)
    assert cache.reused_tokens == second.prompt_tokens - second.prefilled_tokens
    assert (cache.message >= 0).all()
