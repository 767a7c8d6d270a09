"""ChatState: the prompt is transformers' apply_chat_template, turns, cancellation, context overflow."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from kerasllm_widget.chat.chat_state import ChatState
from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.generation.registry import engine_for

CONVERSATION = [
    {"role": "user", "content": "Hi! Who are you?"},
    {"role": "assistant", "content": "I am a small language model."},
    {"role": "user", "content": "What can you do?"},
    {"role": "assistant", "content": "I can answer short questions."},
    {"role": "user", "content": "Name a colour."},
]
GREEDY = {"temperature": 0.0, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def model(smollm2_gguf):
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    return Llama3CausalLM.from_preset(str(smollm2_gguf))


@pytest.fixture(scope="module")
def hf_smollm2_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


def turns(messages) -> list[dict]:
    """Role and content of each message (each also has an ``id``)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def done_of(events) -> DoneEvent:
    events = list(events)
    assert isinstance(events[-1], DoneEvent)
    return events[-1]


@pytest.mark.reference
@pytest.mark.parametrize("system_prompt", [None, "You answer in one short sentence."])
def test_smollm2_prompt_equals_transformers_apply_chat_template(
    model, hf_smollm2_tokenizer, system_prompt
):
    chat = ChatState(model, system_prompt=system_prompt)
    chat.messages[:] = CONVERSATION
    messages = (
        [{"role": "system", "content": system_prompt}] if system_prompt else []
    ) + CONVERSATION
    expected = hf_smollm2_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert chat.prompt == expected


@pytest.mark.reference
def test_llama32_prompt_equals_transformers_apply_chat_template(
    llama32_instruct_tokenizer, llama32_instruct_tokenizer_folder
):
    from transformers import AutoTokenizer

    # Formatting needs only the tokenizer and the context length, not the weights.
    stand_in = SimpleNamespace(
        tokenizer=llama32_instruct_tokenizer, backbone=SimpleNamespace(max_sequence_length=131072)
    )
    chat = ChatState(stand_in, system_prompt="You are a pirate. Answer like one.")
    chat.messages[:] = CONVERSATION
    reference = AutoTokenizer.from_pretrained(llama32_instruct_tokenizer_folder)
    messages = [{"role": "system", "content": chat.system_prompt}, *CONVERSATION]
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.prompt == expected
    assert "Today Date:" in expected and expected.count("<|start_header_id|>user") == 3


def test_send_undo_regenerate_reset(model):
    chat = ChatState(model, system_prompt="You are brief.")
    reply = chat.send("What is the capital of France?", **GREEDY)
    assert reply and turns(chat.messages) == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": reply},
    ]
    assert chat.prompt.endswith("<|im_start|>assistant\n") and reply in chat.prompt
    assert chat.context_tokens() == len(model.tokenizer(chat.format(add_generation_prompt=True)))
    again = done_of(chat.regenerate(**GREEDY))
    assert again.reply == reply and len(chat.messages) == 2  # greedy: the same reply, replaced
    second = chat.send("And of Italy?", **GREEDY)
    assert len(chat.messages) == 4 and chat.messages[-1]["content"] == second
    assert turns(chat.undo()) == [
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": second},
    ]
    assert len(chat.messages) == 2
    chat.reset()
    assert chat.messages == [] and chat.system_prompt == "You are brief."


def test_next_turn_reuses_the_cache_and_matches_a_fresh_run(model):
    chat = ChatState(model)
    chat.send("Tell me about cats.", **GREEDY)
    engine = engine_for(model)
    streamed = done_of(chat.stream("And dogs?", **GREEDY))
    assert streamed.prompt_tokens > 0
    # The same turn from an empty cache gives the same reply.
    chat.undo()
    engine.clear_cache()
    fresh = done_of(chat.stream("And dogs?", **GREEDY))
    assert fresh.reply == streamed.reply


def test_cancelled_reply_is_kept_and_the_chat_goes_on(model):
    chat = ChatState(model)
    cancel = threading.Event()
    events = []
    for event in chat.stream(
        "Write a long story about the sea.", cancel_event=cancel, temperature=0.0, max_new_tokens=64
    ):
        events.append(event)
        if isinstance(event, TokenEvent) and event.index == 2:
            cancel.set()
    done = events[-1]
    assert done.stop_reason == "cancelled" and done.reply
    assert turns(chat.messages)[-1] == {"role": "assistant", "content": done.reply}
    assert chat.send("Thanks!", **GREEDY)
    assert len(chat.messages) == 4


def test_context_overflow_drops_oldest_turns_never_the_system_prompt(model):
    turns = [
        {"role": "user", "content": "First question about the history of Rome, in detail please."},
        {"role": "assistant", "content": "Rome was founded, grew into an empire, and fell. " * 3},
        {"role": "user", "content": "Second question about the rivers of Europe."},
        {"role": "assistant", "content": "The Danube, the Rhine and the Loire are long rivers."},
    ]
    question = {"role": "user", "content": "Third question: name a colour."}
    probe = ChatState(model, system_prompt="You are brief.")
    needed = len(model.tokenizer(probe.format([*turns, question])))
    # Room for everything but the last 10 tokens of the reply: the oldest turn has to go.
    chat = ChatState(model, system_prompt="You are brief.", context_length=needed + 16 - 10)
    chat.messages[:] = turns
    done = done_of(chat.stream(question["content"], temperature=0.0, max_new_tokens=16))
    assert done.dropped_turns == 1 and "dropped" in done.notice
    assert "First question" not in chat.prompt and "Second question" in chat.prompt
    assert "You are brief." in chat.prompt
    assert chat.messages[0]["content"] == turns[2]["content"]
    assert done.prompt_tokens + 16 <= chat.context_length


def foreground(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if not k.startswith("background_")}


def test_later_turns_compile_nothing_after_warm_up(model):
    chat = ChatState(model, system_prompt="You are brief.")
    engine = engine_for(model)
    chat.send("Hello!", temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=6, seed=0)
    chat.send("How are you?", temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=6, seed=0)
    warm = foreground(engine.trace_counts)
    for turn in range(5):  # bench/generate.py runs the full 20-turn chat
        chat.send(
            f"Tell me a number above {turn}.",
            temperature=0.7,
            top_k=50,
            top_p=0.9,
            max_new_tokens=6,
            seed=turn,
        )
    assert foreground(engine.trace_counts) == warm
    assert len(chat.messages) == 14


def test_a_long_message_after_short_turns_compiles_nothing(model):
    # Short turns are prefilled in chunks of 32, a long message in chunks of 128: the program
    # for the long chunk is compiled in the background after a turn, before anyone needs it.
    chat = ChatState(model, system_prompt="You are brief.")
    engine = engine_for(model)
    options = {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "max_new_tokens": 6}
    chat.send("Hello!", seed=0, **options)
    chat.send("How are you?", seed=1, **options)
    engine.wait_for_precompile()  # the user reads the reply and types
    warm = foreground(engine.trace_counts)
    chat.send("Please " + "tell me more about that, " * 12, seed=2, **options)
    chat.send("Thanks!", seed=3, **options)
    assert foreground(engine.trace_counts) == warm


def test_a_chat_outgrowing_its_cache_uses_programs_compiled_ahead(model):
    chat = ChatState(model, cache_length=256)
    engine = engine_for(model)
    engine.clear_cache()
    # A sampler no other test here uses, so that no program for it exists yet.
    options = {"temperature": 0.5, "max_new_tokens": 180, "stop_strings": ["."], "seed": 0}
    chat.send("Say hello.", **options)
    assert engine.kept_cache_length() == 256
    # The next turn may need more than 256 slots: a 512-slot set was compiled in the background.
    engine.wait_for_precompile()
    assert 512 in engine.precompiled_cache_lengths
    warm = foreground(engine.trace_counts)
    chat.send("Say goodbye.", **options)
    assert engine.kept_cache_length() == 512
    assert foreground(engine.trace_counts) == warm


def test_unknown_sampling_option_is_refused(model):
    chat = ChatState(model)
    with pytest.raises(TypeError, match="temprature"):
        chat.send("Hi", temprature=0.5)
    assert chat.messages == []
