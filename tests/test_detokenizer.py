"""The incremental detokenizer: whole characters only, and deltas that add up to the full decode."""

from __future__ import annotations

import pytest

from kerasllm_widget.generation.detokenizer import IncrementalDetokenizer
from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

TEXTS = [
    "Hello, world!",
    "Emoji: 😀👍🏽 and a family 👨‍👩‍👧‍👦 and a flag 🇫🇷.",
    "大型语言模型是一种人工智能程序，它能够识别和生成文本。日本語のテキストも試してみましょう。",
    "한국어 문장과 ελληνικά, русский текст, עברית and العربية mixed.\n\tTabs and  double  spaces.",
    "Math: ∑ᵢ xᵢ² ≤ ∞, arrows ⟶ and ℝ³; code `print('héllo')` 🐍🔥",
    "<|start_header_id|>assistant<|end_header_id|>\n\nSpecial tokens 🙂<|eot_id|>",
]


@pytest.fixture(scope="module")
def tokenizer(llama32_instruct_tokenizer) -> Llama3Tokenizer:
    return llama32_instruct_tokenizer


def stream(detokenizer: IncrementalDetokenizer, ids) -> list[str]:
    deltas = [detokenizer.push(int(i)) for i in ids]
    deltas.append(detokenizer.flush())
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_to_the_full_decode(tokenizer, text):
    ids = tokenizer(text)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = stream(detokenizer, ids)
    assert "".join(deltas) == tokenizer.detokenize(ids) == text
    assert detokenizer.text == text
    assert detokenizer.num_tokens == len(ids)
    # No delta ever shows a replacement character: split characters come out whole.
    assert not any("\ufffd" in delta for delta in deltas)


def test_split_emoji_is_held_back_then_emitted_whole(tokenizer):
    ids = tokenizer("Hi 🐍").tolist()
    # The real Llama 3 vocabulary spells " 🐍" as three byte-level tokens:
    # " \xf0\x9f", "\x90" and "\x8d"; each alone decodes to replacement characters.
    assert len(ids) == 4
    assert all(tokenizer.detokenize([i]).endswith("\ufffd") for i in ids[1:])
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.push(ids[0]) == "Hi"
    assert detokenizer.push(ids[1]) == " "  # the space is final, the emoji is not whole yet
    assert detokenizer.push(ids[2]) == ""
    assert detokenizer.push(ids[3]) == "🐍"
    assert detokenizer.flush() == ""


@pytest.mark.parametrize(
    "text", ["憂鬱な龘靐齉の魑魅魍魎", "饕餮耄耋鳏寡孤独", "한국어 문장입니다 뷁"]
)
def test_cjk_characters_split_across_tokens_come_out_whole(tokenizer, text):
    ids = tokenizer(text).tolist()
    detokenizer = IncrementalDetokenizer(tokenizer)
    held = 0
    for token_id in ids:
        delta = detokenizer.push(token_id)
        held += delta == ""
        assert "\ufffd" not in delta
    assert held > 0, "expected tokens that end mid-character in this text"
    assert detokenizer.text + detokenizer.flush() == text


def test_incomplete_character_at_the_end_is_flushed_as_the_full_decode_shows_it(tokenizer):
    ids = tokenizer("Hi 🐍").tolist()[:3]  # the emoji's last byte never comes
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = stream(detokenizer, ids)
    assert deltas[:3] == ["Hi", " ", ""]
    assert deltas[-1] == tokenizer.detokenize(ids)[len("Hi ") :]
    assert deltas[-1].startswith("\ufffd")
    assert "".join(deltas) == tokenizer.detokenize(ids)


def test_invalid_bytes_match_the_full_decode(tokenizer):
    # "\xf0\x9f\x98" (an emoji's first bytes) and "\x80" (its last byte) used out of place:
    # a stray continuation byte, and a lead sequence followed by a space. Both decode to U+FFFD.
    lead, continuation = tokenizer("a😀").tolist()[1:]
    ids = [*tokenizer("ab").tolist(), continuation, *tokenizer(" ok").tolist(), lead]
    ids += [*tokenizer(" end").tolist(), continuation]
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = stream(detokenizer, ids)
    full = tokenizer.detokenize(ids)
    assert full.count("\ufffd") == 3
    assert "".join(deltas) == full


def test_special_tokens_kept_or_skipped(tokenizer):
    ids = tokenizer("<|begin_of_text|>Hello<|eot_id|>").tolist()
    assert ids == [128000, 9906, 128009]
    assert (
        "".join(stream(IncrementalDetokenizer(tokenizer), ids))
        == "<|begin_of_text|>Hello<|eot_id|>"
    )
    skipping = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    assert stream(skipping, ids) == ["", "Hello", "", ""]


def test_context_ids_are_not_emitted(tokenizer):
    prompt = tokenizer("The answer is").tolist()
    answer = tokenizer(" forty-two 🎉").tolist()
    detokenizer = IncrementalDetokenizer(tokenizer, context_ids=prompt)
    text = "".join(stream(detokenizer, answer))
    assert text == tokenizer.detokenize(prompt + answer)[len(tokenizer.detokenize(prompt)) :]
    assert text == " forty-two 🎉"


def test_window_stays_small_on_long_streams(tokenizer):
    # The prefix/read-offset window slides: ids already emitted are dropped.
    text = "Streaming text with emoji 😀 and 中文 repeated. " * 200
    ids = tokenizer(text).tolist()
    detokenizer = IncrementalDetokenizer(tokenizer)
    longest_window = 0
    for token_id in ids:
        detokenizer.push(token_id)
        longest_window = max(longest_window, detokenizer.window_size)
    assert detokenizer.text + detokenizer.flush() == text
    assert longest_window <= 8


def test_reset_starts_a_new_stream(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer)
    detokenizer.push_many(tokenizer("first"))
    detokenizer.reset()
    assert detokenizer.push_many(tokenizer("second 😀")) == "second 😀"
    assert detokenizer.text == "second 😀"


@pytest.mark.parametrize("text", ["Hello world", "Hello 😀 world é!", "é😀😀 Hello"])
def test_sentencepiece_style_decoder_keeps_spaces_right(sentencepiece_style_tokenizer_json, text):
    # Llama 2 style: "▁" spaces, <0xF0> byte-fallback tokens, and a decoder that strips the first
    # space of whatever it decodes, so each window needs the previous chunk as context.
    tokenizer = Llama3Tokenizer(sentencepiece_style_tokenizer_json)
    ids = tokenizer(text)
    deltas = stream(IncrementalDetokenizer(tokenizer), ids)
    assert "".join(deltas) == tokenizer.detokenize(ids) == text
    assert not any("\ufffd" in delta for delta in deltas)


def test_works_on_a_bare_tokenizers_object(tokenizer):
    ids = tokenizer("Hi 😀 there").tolist()
    detokenizer = IncrementalDetokenizer(tokenizer.backend)
    assert "".join(stream(detokenizer, ids)) == "Hi 😀 there"
