"""Token and preprocessor tables on the real Llama 3 tokenizer (the seed's own figures)."""

from __future__ import annotations

import numpy as np
import pytest

from kerasllm_widget import inspect
from kerasllm_widget.inspect.pieces import piece, readable_bytes
from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor

BOS, EOS = 128000, 128009


@pytest.fixture(scope="module")
def tokenizer(llama32_instruct_tokenizer):
    return llama32_instruct_tokenizer


@pytest.fixture(scope="module")
def preprocessor(tokenizer):
    return Llama3CausalLMPreprocessor(tokenizer)


def test_hello_is_one_token_as_in_the_seed(tokenizer):
    table = inspect.tokens(tokenizer, "Hello")
    assert table.ids.tolist() == [9906]
    assert table.pieces[0] == {
        "id": 9906,
        "piece": "Hello",
        "text": "Hello",
        "bytes": list(b"Hello"),
        "is_special": False,
        "start": 0,
        "end": 5,
    }


def test_pieces_show_whitespace_special_tokens_and_split_characters(tokenizer):
    text = "Hi there\n<|eot_id|>🦙!"
    table = inspect.tokens(tokenizer, text)
    assert (table.num_chars, table.num_bytes) == (len(text), len(text.encode()))
    by_piece = {p["piece"]: p for p in table.pieces}
    assert "␣there" in by_piece and by_piece["␣there"]["text"] == " there"
    assert by_piece["<|eot_id|>"]["is_special"] and by_piece["<|eot_id|>"]["id"] == EOS
    # Offsets point back into the text: a whole-character token covers exactly its own text.
    whole = [p for p in table.pieces if not p["is_special"] and "\ufffd" not in p["text"]]
    assert len(whole) >= 4
    for p in whole:
        assert text[p["start"] : p["end"]] == p["text"]
    assert b"".join(bytes(p["bytes"]) for p in table.pieces) == text.encode()
    assert table.to_dict()["num_tokens"] == table.num_tokens == len(tokenizer(text))
    assert "tokens" in repr(table)


def test_a_character_split_over_tokens_gets_byte_labels():
    assert readable_bytes("🦙".encode()[:3]) == "<0xF0><0x9F><0xA6>"
    assert readable_bytes(b"a\tb\r\n") == "a⇥b␍↵"


def test_piece_of_an_id(tokenizer):
    assert piece(tokenizer, 1917) == "␣world"
    assert piece(tokenizer, BOS) == "<|begin_of_text|>"


def test_compare_two_tokenizers(tokenizer, smollm2_gguf):
    from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

    smollm2 = Llama3Tokenizer.from_preset(str(smollm2_gguf))
    text = "Tokenizers split llamas 🦙 differently."
    result = inspect.compare(tokenizer, smollm2, text)
    llama, smol = result["tables"]
    assert result["num_tokens"] == [len(tokenizer(text)), len(smollm2(text))]
    assert llama.ids.tolist() != smol.ids.tolist()
    assert inspect.tokens(smollm2, "Hello world").ids.tolist() == [19556, 905]


def test_preprocess_matches_the_seed_and_labels_every_cell(preprocessor):
    table = inspect.preprocess(preprocessor, ["Hello", "Hi!"], sequence_length=6)
    assert table.token_ids.tolist() == [[BOS, 9906, EOS, 0, 0, 0], [BOS, 13347, 0, EOS, 0, 0]]
    assert table.labels.tolist() == [[9906, EOS, 0, 0, 0, 0], [13347, 0, EOS, 0, 0, 0]]
    assert table.padding_mask.sum(1).tolist() == [3, 4]
    assert table.token_kinds[0] == ["start", "text", "end", "pad", "pad", "pad"]
    # "!" is id 0, the same number as padding: only the mask tells them apart.
    assert table.token_kinds[1] == ["start", "text", "text", "end", "pad", "pad"]
    assert table.label_kinds[1] == ["text", "text", "end", "pad", "pad", "pad"]
    assert table.token_pieces[1][:4] == ["<|begin_of_text|>", "Hi", "!", "<|eot_id|>"]
    assert table.truncated == [False, False]
    row = table.to_dict()["rows"][0]
    assert row["padding_mask"] == [True, True, True, False, False, False]
    assert row["sample_weight"] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_preprocess_marks_a_cut_text(preprocessor):
    table = inspect.preprocess(preprocessor, "one two three four five six", sequence_length=4)
    assert table.token_ids.shape == (1, 4)
    assert table.truncated == [True]
    assert table.padding_mask.all()
    assert inspect.preprocess(preprocessor, "one two", sequence_length=3).truncated == [False]
    with pytest.raises(ValueError, match="at least one"):
        inspect.preprocess(preprocessor, [])


def test_sources_refuse_objects_without_a_tokenizer():
    with pytest.raises(TypeError, match="no tokenizer"):
        inspect.tokens(object(), "Hello")
    with pytest.raises(TypeError, match="no preprocessor"):
        inspect.preprocess(np.zeros(3), "Hello")


def test_inspect_names_are_the_functions_even_after_their_modules_load():
    import importlib

    for module in (
        "token_table",
        "attention_maps",
        "distributions",
        "preprocess_table",
        "quantization",
    ):
        importlib.import_module(f"kerasllm_widget.inspect.{module}")
    for name in ("tokens", "attention", "next_token", "preprocess", "quantize", "score", "entropy"):
        assert callable(getattr(inspect, name)), name
    assert "AttentionMaps" in dir(inspect)
    with pytest.raises(AttributeError, match="no attribute"):
        inspect.nothing_here  # noqa: B018
