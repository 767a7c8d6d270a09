"""Off the happy path, generation: the seed's float16 line on a CPU, and bad numbers refused
(never reinterpreted) by one validation shared by `generate`, `stream`, ChatState and the
widget's traits."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.generation.settings import GenerationSettingError
from tests.tiny_llama import VOCABULARY_SIZE, tiny_causal_lm


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm(seed=3)


# ---- float16 on a CPU (the seed's own `dtype="float16"` line) ----------------------------------


@pytest.fixture(scope="module")
def smollm2_float32(smollm2_gguf):
    from kerasllm_widget import Llama3CausalLM

    return Llama3CausalLM.from_preset(str(smollm2_gguf), dtype="float32")


@pytest.mark.slow
def test_float16_generates_on_cpu_as_float32_does(smollm2_gguf, smollm2_float32):
    from kerasllm_widget import Llama3CausalLM

    half = Llama3CausalLM.from_preset(str(smollm2_gguf), dtype="float16")
    prompt = "The capital of France is"
    wanted = smollm2_float32.generate(prompt, max_new_tokens=6, strip_prompt=True)
    got = half.generate(prompt, max_new_tokens=6, strip_prompt=True)
    assert got == wanted, (got, wanted)
    # The Keras call (the explicit forward, not the engine) runs too, and agrees on the argmax.
    x = half.preprocessor.generate_preprocess(prompt)
    batch = {k: np.asarray(v)[None] for k, v in x.items()}
    logits = np.asarray(half(batch), np.float32)[0, -1]
    reference = np.asarray(smollm2_float32(batch), np.float32)[0, -1]
    assert np.isfinite(logits).all()
    assert int(logits.argmax()) == int(reference.argmax())


@pytest.mark.parametrize("kernel", [True, False])
def test_float16_tiny_model_generates_with_and_without_the_cpu_kernel(monkeypatch, kernel):
    from kerasllm_widget.kernels import cpu

    if not kernel:
        monkeypatch.setattr(cpu, "available", lambda: False)
    half = tiny_causal_lm(seed=5, dtype="float16")
    full = tiny_causal_lm(seed=5, dtype="float32")
    for target, source in zip(half.variables, full.variables, strict=True):
        target.assign(np.asarray(source.value).astype(target.dtype))
    ids = half.preprocessor.generate_preprocess("hello")["token_ids"].tolist()
    batch = {"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)), bool)}
    half_logits = np.asarray(half(batch), np.float32)[0, -1]
    full_logits = np.asarray(full(batch), np.float32)[0, -1]
    np.testing.assert_allclose(half_logits, full_logits, atol=2e-2 * np.abs(full_logits).max())
    events = list(half.stream(ids, max_new_tokens=4, ignore_eos=True))
    assert events[-1].generated_tokens == 4
    # Greedy: the first token is the float16 forward's own argmax.
    assert events[0].token_id == int(half_logits.argmax())


# ---- bad numbers are refused, naming the argument, the value and the range ---------------------


@pytest.mark.parametrize("value", [0, -1, 10**9, 2.5, True])
def test_max_new_tokens_out_of_range_is_refused_everywhere(model, value):
    from kerasllm_widget.chat.chat_state import ChatState

    with pytest.raises(GenerationSettingError, match=r"max_new_tokens=.* not allowed"):
        model.generate("hello", max_new_tokens=value)
    with pytest.raises(GenerationSettingError, match="max_new_tokens"):
        list(model.stream("hello", max_new_tokens=value))
    chat = ChatState(model)
    with pytest.raises(GenerationSettingError, match="max_new_tokens"):
        list(chat.stream("hello", max_new_tokens=value))
    assert chat.messages == []  # nothing was added


@pytest.mark.parametrize(
    ("option", "value", "pattern"),
    [
        ("temperature", math.nan, r"temperature=nan .*finite number >= 0"),
        ("temperature", math.inf, r"temperature=inf"),
        ("temperature", -0.5, r"temperature=-0.5"),
        ("top_p", 0.0, r"top_p=0.0 .*\(0, 1\]"),
        ("top_p", 1.5, r"top_p=1.5"),
        ("top_p", math.nan, r"top_p=nan"),
        ("top_k", -3, r"top_k=-3 .*>= 0"),
        ("min_p", 2.0, r"min_p=2.0 .*\[0, 1\]"),
        ("repetition_penalty", 0.0, r"repetition_penalty=0.0 .*> 0"),
        ("seed", -1, r"seed=-1"),
    ],
)
def test_sampling_numbers_outside_their_range_are_refused(model, option, value, pattern):
    with pytest.raises(GenerationSettingError, match=pattern):
        model.generate("hello", max_new_tokens=2, **{option: value})
    with pytest.raises(GenerationSettingError, match=pattern):
        list(model.stream("hello", max_new_tokens=2, **{option: value}))


@pytest.mark.parametrize("bad_id", [VOCABULARY_SIZE, 10**7, -5, 2**40, 10**30])
def test_token_ids_outside_the_vocabulary_are_refused(model, bad_id):
    pattern = rf"token ids\[1\]={bad_id} .*from 0 to {VOCABULARY_SIZE - 1}"
    with pytest.raises(GenerationSettingError, match=pattern):
        model.generate([1, bad_id, 2], max_new_tokens=2)
    with pytest.raises(GenerationSettingError, match=pattern):
        list(model.stream([1, bad_id, 2], max_new_tokens=2))
    preprocessed = {"token_ids": np.array([[1, bad_id]], dtype=object), "padding_mask": None}
    with pytest.raises(GenerationSettingError, match=r"token ids\[1\]"):
        model.generate(preprocessed, max_new_tokens=2)


def test_token_ids_outside_the_vocabulary_are_refused_by_the_model_call(model):
    x = {"token_ids": np.array([[1, 10**7]]), "padding_mask": np.ones((1, 2), bool)}
    with pytest.raises(ValueError, match=r"token_ids.*10000000.*vocabulary"):
        model(x)


def test_an_unbatched_input_to_the_model_call_says_how_to_batch_it(model):
    x, _, _ = model.preprocessor("Hello", sequence_length=6)
    with pytest.raises(ValueError, match=r"\[batch, length\].*preprocessor\(\[") as error:
        model(x)
    assert "(6,)" in str(error.value)


def test_a_bare_stop_string_is_one_string_not_its_characters(model):
    free = model.generate("hello", max_new_tokens=12, strip_prompt=True)
    assert len(free) > 2
    # A stop string that is the reply's own text from its third character on.
    stop = free[2:]
    cut = model.generate("hello", max_new_tokens=12, strip_prompt=True, stop_strings=stop)
    assert cut == free[:2]
    events = list(model.stream("hello", max_new_tokens=12, stop_strings=stop))
    assert events[-1].reply == free[:2]
    assert events[-1].stop_reason == "stop_string"
    with pytest.raises(GenerationSettingError, match=r"stop_strings=\['a', 3\]"):
        model.generate("hello", max_new_tokens=2, stop_strings=["a", 3])


def test_empty_and_malformed_batches_say_what_to_pass(model):
    with pytest.raises(ValueError, match="empty list"):
        model.generate([])
    with pytest.raises(ValueError, match=r"needs? 'token_ids'"):
        model.generate({"ids": [[1, 2]]})


def test_a_cancel_event_already_set_generates_nothing(model):
    cancel = threading.Event()
    cancel.set()
    events = list(model.stream("hello", max_new_tokens=8, cancel_event=cancel))
    assert [type(e) for e in events] == [DoneEvent]
    assert events[0].stop_reason == "cancelled"
    assert events[0].token_ids == []
    assert not any(isinstance(e, TokenEvent) for e in events)


def test_fit_on_no_data_says_so(model):
    with pytest.raises(ValueError, match=r"no training examples"):
        model.fit([])
