"""The streaming engine on the real SmolLM2-135M-Instruct GGUF: parity with transformers, streams,
stop rules, cancellation, compile counts; and the text layer driven by a scripted engine."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from kerasllm_widget.generation.api import stream_ids
from kerasllm_widget.generation.engine import StepOutputs
from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.samplers import Sampler

STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def model(smollm2_gguf):
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    return Llama3CausalLM.from_preset(str(smollm2_gguf))


@pytest.fixture(scope="module")
def engine(model):
    return engine_for(model)


@pytest.fixture(scope="module")
def story_prompt(model) -> str:
    return model.tokenizer.apply_chat_template(STORY)


@pytest.fixture(scope="module")
def story_ids(model, story_prompt) -> list[int]:
    return [int(i) for i in model.preprocessor.generate_preprocess(story_prompt)["token_ids"]]


def events_of(stream) -> tuple[list[TokenEvent], DoneEvent]:
    events = list(stream)
    assert isinstance(events[-1], DoneEvent)
    assert all(isinstance(e, TokenEvent) for e in events[:-1])
    return events[:-1], events[-1]


@pytest.fixture(scope="module")
def greedy_story(model, story_prompt):
    """The greedy reply to the story prompt: (token events, done event)."""
    return events_of(model.stream(story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy"))


@pytest.mark.reference
def test_greedy_matches_transformers_token_for_token(smollm2_gguf, story_ids, greedy_story):
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([story_ids]),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            attention_mask=torch.ones(1, len(story_ids), dtype=torch.long),
        )
    expected = out[0, len(story_ids) :].tolist()
    _, done = greedy_story
    assert done.stop_reason == "max_new_tokens"
    assert len(done.token_ids) == NEW_TOKENS >= 32
    assert done.token_ids == expected


def test_streamed_text_equals_generate_text(model, story_prompt, greedy_story):
    tokens, done = greedy_story
    streamed = "".join(e.text for e in tokens)
    assert streamed == done.reply
    assert streamed == model.tokenizer.detokenize(done.token_ids)
    assert [e.token_id for e in tokens] == done.token_ids
    assert [e.index for e in tokens] == list(range(len(tokens)))
    reply = model.generate(
        story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy", strip_prompt=True
    )
    assert reply == streamed
    # keras_hub's form: the prompt (without the start token) followed by the reply.
    full = model.generate(story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy")
    assert full.endswith(streamed) and full.startswith("<|im_start|>system")
    assert done.time_to_first_token_s > 0 and done.decode_tokens_per_s > 0


def test_prompts_within_one_bucket_compile_once(model, engine):
    rng = np.random.default_rng(0)
    lengths = [33, 40, 47, 58, 64]  # all in the 64 bucket
    before = None
    for n, length in enumerate(lengths):
        # Distinct first tokens: no prefix is shared with the kept cache.
        ids = [1000 + n] + rng.integers(100, 20000, size=length - 1).tolist()
        events_of(stream_ids(model, ids, max_new_tokens=3, sampler=Sampler(temperature=0)))
        if n == 0:
            before = dict(engine.trace_counts)
    assert dict(engine.trace_counts) == before


def test_sampler_knobs_are_traced_and_seeded(model, engine, story_prompt):
    def run(seed, temperature):
        engine.clear_cache()  # the same prompt again would reuse its prefix: another program
        tokens, done = events_of(
            model.stream(
                story_prompt,
                max_new_tokens=12,
                top_k=40,
                top_p=0.9,
                temperature=temperature,
                seed=seed,
                top_k_alternatives=5,
            )
        )
        return tokens, done.token_ids

    tokens, first = run(seed=1, temperature=0.9)
    compiled = dict(engine.trace_counts)
    assert run(seed=1, temperature=0.9)[1] == first  # reproducible
    assert run(seed=2, temperature=1.3)[1] != first  # another seed and temperature: no recompile
    assert dict(engine.trace_counts) == compiled
    for event in tokens:  # sampled tokens come from the top 40, and report their probabilities
        probs = [a.prob for a in event.top_k]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert event.logprob <= math.log(event.top_k[0].prob) + 1e-5
        if event.token_id in [a.token_id for a in event.top_k]:
            alternative = next(a for a in event.top_k if a.token_id == event.token_id)
            assert event.logprob == pytest.approx(math.log(alternative.prob), abs=1e-4)


def test_cancel_event_stops_within_a_chunk_and_model_stays_usable(
    model, engine, story_prompt, greedy_story
):
    cancel = threading.Event()
    seen = 0
    events = []
    for event in model.stream(
        story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy", cancel_event=cancel
    ):
        events.append(event)
        if isinstance(event, TokenEvent):
            seen += 1
            if seen == 3:
                cancel.set()
    done = events[-1]
    assert done.stop_reason == "cancelled"
    assert 3 <= done.generated_tokens <= 3 + engine.chunk_size
    # The next request on the same (reused) cache gives exactly the uncancelled result.
    _, again = events_of(model.stream(story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy"))
    assert again.token_ids == greedy_story[1].token_ids


def test_closing_the_stream_early_keeps_model_usable(model, story_prompt, greedy_story):
    stream = model.stream(story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy")
    next(stream), next(stream)
    stream.close()
    _, again = events_of(model.stream(story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy"))
    assert again.token_ids == greedy_story[1].token_ids


def test_continuing_a_kept_prefix_equals_a_fresh_prefill(model, engine, story_ids, greedy_story):
    longer = story_ids + greedy_story[1].token_ids[:10] + model.tokenizer("\n\nThe end?").tolist()
    events_of(stream_ids(model, story_ids, max_new_tokens=12, sampler="greedy"))
    _, reused = events_of(stream_ids(model, longer, max_new_tokens=12, sampler="greedy"))
    engine.clear_cache()
    _, fresh = events_of(stream_ids(model, longer, max_new_tokens=12, sampler="greedy"))
    assert reused.token_ids == fresh.token_ids


def test_stop_string_spanning_tokens_is_not_emitted(model, story_prompt, greedy_story):
    tokens, done = greedy_story
    # A stop string made of the end of one token and the start of the next.
    for i in range(5, len(tokens) - 1):
        a, b = tokens[i].text, tokens[i + 1].text
        if len(a) >= 2 and len(b) >= 2:
            stop = a[-2:] + b[:2]
            if done.reply.find(stop) == sum(len(t.text) for t in tokens[: i + 1]) - 2:
                break
    else:
        pytest.fail("no token pair to build a spanning stop string from")
    events, stopped = events_of(
        model.stream(story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy", stop_strings=[stop])
    )
    assert stopped.stop_reason == "stop_string"
    assert stopped.reply == done.reply[: done.reply.find(stop)]
    assert "".join(e.text for e in events) == stopped.reply
    assert stop not in stopped.reply


def test_extra_stop_token_ids(model, story_prompt, greedy_story):
    ids = greedy_story[1].token_ids
    at = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    _, done = events_of(
        model.stream(
            story_prompt, max_new_tokens=NEW_TOKENS, sampler="greedy", stop_token_ids=[ids[at]]
        )
    )
    assert done.stop_reason == "stop_token"
    assert done.token_ids == ids[:at]


def test_every_checkpoint_stop_id_ends_generation(model, story_ids):
    # SmolLM2 stops on <|im_end|>; a prompt that asks for nothing more ends at once.
    stops = set(model.tokenizer.stop_token_ids)
    assert stops
    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "Say OK."}])
    _, done = events_of(model.stream(prompt, max_new_tokens=NEW_TOKENS, sampler="greedy"))
    assert done.stop_reason == "stop_token"
    assert not stops & set(done.token_ids)


def chat_prompts(model) -> list[str]:
    questions = ["What is the capital of France?", "Write a poem about the sea, please."]
    return [
        model.tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in questions
    ]


def test_batched_generate_matches_one_row_at_a_time(model):
    prompts = chat_prompts(model)  # two lengths: the shorter row is left-padded
    batched = model.generate(prompts, max_new_tokens=10, sampler="greedy", strip_prompt=True)
    single = [
        model.generate(p, max_new_tokens=10, sampler="greedy", strip_prompt=True) for p in prompts
    ]
    assert batched == single


def test_preprocessed_input_comes_back_preprocessed(model):
    x = model.preprocessor.generate_preprocess(chat_prompts(model))
    out = model.generate(x, max_new_tokens=4, sampler="greedy")
    assert set(out) == {"token_ids", "padding_mask"}
    for row in range(2):
        prompt = x["token_ids"][row][x["padding_mask"][row]]
        assert out["token_ids"][row][: len(prompt)].tolist() == prompt.tolist()
        assert out["padding_mask"][row].sum() > len(prompt)


def test_compile_sampler_keeps_keras_compile(model):
    try:
        model.compile(sampler="top_k")
        assert model.compiled and model.optimizer is not None
        assert model.sampler.top_k == 5 and not model.sampler.is_greedy
    finally:
        model.sampler = "greedy"
    assert model.sampler.is_greedy


# ---- the text layer, driven by a scripted engine (exact token sequences) -----------------------


class ScriptedEngine:
    """Yields a fixed token sequence in chunks, as `GenerationEngine.generate_tokens` would."""

    sampler = Sampler(temperature=0)

    def __init__(self, token_ids, chunk=3):
        self.token_ids, self.chunk = list(token_ids), chunk

    def generate_tokens(self, prompts, max_new_tokens, num_alternatives=0, **_):
        ids = self.token_ids[:max_new_tokens]
        for start in range(0, len(ids), self.chunk):
            piece = np.asarray([ids[start : start + self.chunk]], np.int32)
            n = piece.shape[1]
            yield StepOutputs(
                piece,
                np.zeros((1, n), np.float32),
                np.zeros((1, n, num_alternatives), np.int32),
                np.zeros((1, n, num_alternatives), np.float32),
            )


@pytest.fixture(scope="module")
def tokenizer(model):
    return model.tokenizer


def scripted(model, ids, **options):
    return events_of(
        stream_ids(model, [1, 2, 3], engine=ScriptedEngine(ids), max_new_tokens=64, **options)
    )


def test_utf8_characters_split_across_tokens_come_out_whole(model, tokenizer):
    text = "Dragons 🐉 bake 日本語 bread 😀!"
    ids = tokenizer(text).tolist()
    partial = [
        i for i in ids if tokenizer.token_bytes(i).decode("utf-8", "replace").count("\ufffd")
    ]
    assert partial, "the test needs tokens that hold part of a character"
    events, done = scripted(model, ids)
    assert all("\ufffd" not in e.text for e in events)
    assert "".join(e.text for e in events) == done.reply == tokenizer.detokenize(ids) == text


def test_truncated_character_at_the_end_is_flushed(model, tokenizer):
    ids = tokenizer("ok 🐉 日本").tolist()
    cut = next(k for k in range(1, len(ids)) if tokenizer.detokenize(ids[:k]).endswith("\ufffd"))
    events, done = scripted(model, ids[:cut])  # the stream ends in the middle of a character
    assert "".join(e.text for e in events) == done.reply == tokenizer.detokenize(ids[:cut])


def test_scripted_stop_strings_across_tokens(model, tokenizer):
    ids = tokenizer("First line.\nUser: hello\nmore").tolist()
    events, done = scripted(model, ids, stop_strings=["\nUser:"])
    assert done.stop_reason == "stop_string" and done.reply == "First line."
    assert "".join(e.text for e in events) == "First line."
    # A prefix of a stop string that never completes is released at the end.
    events, done = scripted(model, tokenizer("Almost\nUse").tolist(), stop_strings=["\nUser:"])
    assert done.stop_reason == "max_new_tokens" and done.reply == "Almost\nUse"
    assert "".join(e.text for e in events) == done.reply


def test_context_full_on_a_short_context(random_llama32_checkpoint):
    from kerasllm_widget.checkpoints.presets import load_checkpoint
    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    backbone = Llama3Backbone.from_checkpoint(
        load_checkpoint(str(random_llama32_checkpoint)), progress=False
    )
    backbone.max_sequence_length = 64
    tiny = Llama3CausalLM(backbone)
    _, done = events_of(stream_ids(tiny, list(range(3, 53)), max_new_tokens=40, sampler="greedy"))
    assert done.stop_reason == "context_full"
    assert done.generated_tokens == 64 - 50
    assert done.notice


def test_decode_calls_are_sized_by_the_measured_step_time():
    from kerasllm_widget.generation.buckets import DECODE_CALL_S, decode_call_tokens

    # Doubling from one token until a step time is known, capped by the compiled chunk.
    assert [decode_call_tokens(None, n, 16) for n in (1, 2, 4, 8, 16)] == [2, 4, 8, 16, 16]
    # Slow steps: a call holds no more than DECODE_CALL_S of work (at least one token), so a
    # Stop waits for about two such calls, not for two compiled chunks.
    assert decode_call_tokens(4 * DECODE_CALL_S, 8, 16) == 1
    assert decode_call_tokens(DECODE_CALL_S / 3, 8, 16) == 3
    # Fast steps (an accelerator): the compiled chunk is the limit.
    assert decode_call_tokens(DECODE_CALL_S / 1000, 32, 64) == 64


def test_chat_turns_are_prefilled_in_short_or_long_chunks():
    from kerasllm_widget.generation.buckets import prefill_chunks as _prefill_chunks

    assert _prefill_chunks(21, start=63) == (32, 32)  # a short user turn: one chunk of 32
    assert _prefill_chunks(32, start=63) == (32, 32)
    assert _prefill_chunks(33, start=63) == (128, 128)
    assert _prefill_chunks(300, start=63) == (128, 384)
    assert _prefill_chunks(100, start=0) == (112, 112)  # a fresh prompt: its own bucket
