"""Llama3Tokenizer with the real Llama 3 tokenizer.json: the seed's figures, special tokens,
checkpoint configuration, token pieces, and parity with transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, pre_tokenizers

from kerasllm_widget.checkpoints.byte_level import (
    BYTE_TO_UNICODE,
    UNICODE_TO_BYTE,
    byte_level_bytes,
)
from kerasllm_widget.checkpoints.checkpoint import Checkpoint
from kerasllm_widget.checkpoints.errors import PresetError
from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

TEXTS = [
    "Hello",
    "Hi there! How are you doing today?",
    "  leading spaces, trailing\t\n",
    "Emoji 😀👍🏽, CJK 大型语言模型, Korean 한국어, accents déjà vu.",
    "numbers 1234567 and code: def f(x): return x**2",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "",
]


def bare_checkpoint(tokenizer_json, tokenizer_config=None, generation_config=None, name="test"):
    return Checkpoint(
        name=name,
        source="/nowhere",
        config={"model_type": "llama"},
        tensor_infos={},
        read_tensor=lambda name: None,
        tokenizer_json=tokenizer_json,
        tokenizer_config=tokenizer_config or {},
        generation_config=generation_config or {},
    )


@pytest.fixture(scope="module")
def tokenizer(llama32_instruct_tokenizer) -> Llama3Tokenizer:
    return llama32_instruct_tokenizer


@pytest.fixture(scope="module")
def llama3_json_text(llama3_tokenizer_json) -> str:
    return llama3_tokenizer_json.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_json_with_bos(sentencepiece_style_tokenizer_json) -> str:
    """A small tokenizer.json whose post-processor prepends <s> (id 1), as Llama 2's does; it
    loads in milliseconds, so the configuration logic is tested on it."""
    data = json.loads(sentencepiece_style_tokenizer_json)
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            bos,
            {"Sequence": {"id": "A", "type_id": 0}},
            bos,
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    return json.dumps(data)


# --------------------------------------------------------------------------- the seed's figures


def test_hello_is_one_token(tokenizer):
    ids = tokenizer("Hello")
    assert isinstance(ids, np.ndarray)
    assert ids.dtype == np.int32
    assert ids.tolist() == [9906]
    assert tokenizer.detokenize([9906]) == "Hello"
    assert tokenizer.detokenize(np.array([9906], dtype=np.int32)) == "Hello"


def test_a_list_gives_a_list_of_int32_arrays(tokenizer):
    out = tokenizer(["Hello", "Hi!"])
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(a, np.ndarray) and a.dtype == np.int32 for a in out)
    assert [a.tolist() for a in out] == [[9906], [13347, 0]]
    assert tokenizer.detokenize([[9906], [13347, 0]]) == ["Hello", "Hi!"]
    assert tokenizer.detokenize(np.array([[9906, 0], [13347, 0]])) == ["Hello!", "Hi!"]


def test_checkpoint_configuration_of_llama32_instruct(tokenizer):
    assert tokenizer.vocabulary_size() == 128256
    assert tokenizer.start_token_id == 128000
    assert tokenizer.end_token_id == 128009
    assert tokenizer.pad_token_id == 0  # no pad token in Llama 3: 0, as keras_hub
    assert tokenizer.stop_token_ids[0] == 128009
    assert set(tokenizer.stop_token_ids) == {128001, 128008, 128009}
    assert tokenizer.add_bos is True  # its tokenizer.json's post-processor prepends BOS
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.chat_template.startswith("{{- bos_token }}")
    assert tokenizer.special_token_ids == frozenset(range(128000, 128256))


def test_plain_calls_add_no_special_tokens(tokenizer):
    # Even though this tokenizer.json's post-processor would prepend BOS.
    assert tokenizer.backend.encode("Hello").ids == [128000, 9906]
    assert tokenizer("Hello").tolist() == [9906]
    assert tokenizer("").tolist() == []


# --------------------------------------------------------------------------- special tokens


def test_special_tokens_in_text_stay_single_tokens(tokenizer):
    ids = tokenizer("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")
    assert ids.tolist() == [128000, 128006, 882, 128007, 271, 13347, 128009]
    assert tokenizer("a<|eot_id|>b").tolist()[1] == 128009


def test_added_chatml_tokens_stay_single_tokens(llama3_json_text):
    # SmolLM2 style: <|im_start|>/<|im_end|> are added special tokens; no BOS is added.
    backend = Tokenizer.from_str(llama3_json_text)
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")]
    )
    tokenizer = Llama3Tokenizer(backend, bos_token="<|im_start|>", eos_token="<|im_end|>")
    im_start, im_end = 128256, 128257
    assert tokenizer.token_to_id("<|im_start|>") == im_start
    ids = tokenizer("<|im_start|>user\nHi<|im_end|>\n").tolist()
    assert ids[0] == im_start and im_end in ids
    assert ids.count(im_start) == 1 and ids.count(im_end) == 1
    assert tokenizer.add_bos is False  # the byte-level post-processor adds nothing
    assert tokenizer.start_token_id == im_start
    assert tokenizer.stop_token_ids == (im_end,)


def test_detokenize_keeps_special_tokens_unless_asked(tokenizer):
    ids = [128000, 9906, 128009]
    assert tokenizer.detokenize(ids) == "<|begin_of_text|>Hello<|eot_id|>"
    assert tokenizer.detokenize(ids, skip_special_tokens=True) == "Hello"
    assert tokenizer.detokenize(128009) == "<|eot_id|>"


def test_id_and_token_lookups(tokenizer):
    assert tokenizer.id_to_token(9906) == "Hello"
    assert tokenizer.id_to_token(1917) == "Ġworld"
    assert tokenizer.token_to_id("<|eot_id|>") == 128009
    assert tokenizer.token_to_id(tokenizer.id_to_token(55555)) == 55555
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.id_to_token(128256)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.token_to_id("<|no_such_token|>")


# --------------------------------------------------------------------------- add_bos and stops


def test_add_bos_follows_the_post_processor_without_config(llama3_tokenizer_json, tokenizer):
    # The packaged Llama 3 tokenizer.json (read from its path) is byte-level only: nothing asks
    # for BOS.
    plain = Llama3Tokenizer(llama3_tokenizer_json, bos_token="<|begin_of_text|>")
    assert plain.add_bos is False
    assert plain.start_token_id == 128000
    assert plain("Hello").tolist() == [9906]
    # Llama 3.2's tokenizer.json prepends <|begin_of_text|>: BOS is found even unnamed.
    unnamed = Llama3Tokenizer(tokenizer.backend)
    assert unnamed.add_bos is True
    assert unnamed.start_token_id == 128000
    assert unnamed.end_token_id is None
    assert unnamed.stop_token_ids == ()


def test_tokenizer_config_add_bos_token_wins(tiny_json_with_bos):
    config = {"bos_token": "<s>", "eos_token": "</s>"}
    assert Llama3Tokenizer.from_checkpoint(bare_checkpoint(tiny_json_with_bos, config)).add_bos
    off = Llama3Tokenizer.from_checkpoint(
        bare_checkpoint(tiny_json_with_bos, {**config, "add_bos_token": False})
    )
    assert off.add_bos is False
    assert off.start_token_id == 1


def test_special_tokens_written_as_added_token_dicts(tiny_json_with_bos):
    # Older tokenizer_config.json files serialize special tokens as AddedToken dicts.
    config = {
        "bos_token": {"__type": "AddedToken", "content": "<s>", "special": True},
        "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True},
        "pad_token": None,
    }
    tokenizer = Llama3Tokenizer.from_checkpoint(bare_checkpoint(tiny_json_with_bos, config))
    assert (tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id) == (1, 2, 0)


def test_stop_ids_from_generation_config(tiny_json_with_bos):
    config = {"bos_token": "<s>", "eos_token": "</s>"}
    single = bare_checkpoint(tiny_json_with_bos, config, {"eos_token_id": 0})
    assert Llama3Tokenizer.from_checkpoint(single).stop_token_ids == (2, 0)
    listed = bare_checkpoint(tiny_json_with_bos, config, {"eos_token_id": [0, 2, 3]})
    assert Llama3Tokenizer.from_checkpoint(listed).stop_token_ids == (2, 0, 3)
    # Without generation_config.json, config.json's eos_token_id is used.
    from_model_config = bare_checkpoint(tiny_json_with_bos, config)
    from_model_config.config["eos_token_id"] = 1
    assert Llama3Tokenizer.from_checkpoint(from_model_config).stop_token_ids == (2, 1)


def test_without_tokenizer_config_the_model_config_names_bos_and_eos(tiny_json_with_bos):
    checkpoint = bare_checkpoint(tiny_json_with_bos)
    checkpoint.config.update(bos_token_id=1, eos_token_id=[2, 0])
    tokenizer = Llama3Tokenizer.from_checkpoint(checkpoint)
    assert (tokenizer.start_token_id, tokenizer.end_token_id) == (1, 2)
    assert tokenizer.stop_token_ids == (2, 0)
    assert tokenizer.add_bos is True


def test_bad_checkpoints_give_clear_errors(tiny_json_with_bos):
    with pytest.raises(PresetError, match="broken: the checkpoint has no tokenizer"):
        Llama3Tokenizer.from_checkpoint(bare_checkpoint(None, name="broken"))
    with pytest.raises(PresetError, match="eos_token '<\\|nope\\|>' is not in the tokenizer"):
        Llama3Tokenizer.from_checkpoint(
            bare_checkpoint(tiny_json_with_bos, {"eos_token": "<|nope|>"})
        )
    with pytest.raises(PresetError, match="stop token id 999999"):
        Llama3Tokenizer.from_checkpoint(
            bare_checkpoint(tiny_json_with_bos, {}, {"eos_token_id": [2, 999999]})
        )
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Llama3Tokenizer(__file__)
    with pytest.raises(ValueError, match="tokenizer JSON could not be read"):
        Llama3Tokenizer('{"version": "1.0"}')
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        Llama3Tokenizer("/nowhere/tokenizer.json")


# --------------------------------------------------------------------------- saving


def test_config_round_trip(tokenizer):
    config = tokenizer.get_config()
    json.dumps(config)  # serializable
    clone = Llama3Tokenizer.from_config(config)
    text = TEXTS[3] + TEXTS[5]
    assert clone(text).tolist() == tokenizer(text).tolist()
    for name in ("start_token_id", "end_token_id", "pad_token_id", "stop_token_ids", "add_bos"):
        assert getattr(clone, name) == getattr(tokenizer, name), name
    assert clone.chat_template == tokenizer.chat_template


def test_save_to_preset_writes_hugging_face_files(tokenizer, tmp_path):
    tokenizer.save_to_preset(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["bos_token"] == "<|begin_of_text|>"
    assert config["eos_token"] == "<|eot_id|>"
    assert config["add_bos_token"] is True
    assert config["chat_template"] == tokenizer.chat_template
    # The folder's tokenizer.json is found from the folder itself.
    loaded = Llama3Tokenizer(tmp_path, bos_token=config["bos_token"], eos_token=config["eos_token"])
    assert loaded("Hello <|eot_id|>").tolist() == tokenizer("Hello <|eot_id|>").tolist()
    assert loaded.add_bos is True


# --------------------------------------------------------------------------- token pieces


def test_token_pieces_are_readable(tokenizer):
    pieces = tokenizer.tokenize_pieces("Hello world\n\tend")
    assert [p["piece"] for p in pieces] == ["Hello", "␣world", "↵", "⇥end"]
    assert [p["id"] for p in pieces] == tokenizer("Hello world\n\tend").tolist()
    assert pieces[1]["bytes"] == b" world"
    assert [(p["start"], p["end"]) for p in pieces] == [
        (0, 5),
        (5, 11),
        (11, 12),
        (12, 16),
    ]


def test_token_pieces_of_split_characters_and_special_tokens(tokenizer):
    text = "a🐍<|eot_id|>"
    pieces = tokenizer.tokenize_pieces(text)
    assert b"".join(p["bytes"] for p in pieces) == text.encode("utf-8")
    emoji_pieces = [p for p in pieces if p["start"] == 1 and not p["is_special"]]
    assert len(emoji_pieces) > 1  # the emoji is split over byte-level tokens
    assert all(p["end"] == 2 for p in emoji_pieces)
    assert all(p["piece"].startswith("<0x") for p in emoji_pieces)
    special = pieces[-1]
    assert special == {
        "id": 128009,
        "piece": "<|eot_id|>",
        "bytes": b"<|eot_id|>",
        "is_special": True,
        "start": 2,
        "end": 12,
    }


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_add_up_to_the_text(tokenizer, text):
    pieces = tokenizer.tokenize_pieces(text)
    assert b"".join(p["bytes"] for p in pieces) == text.encode("utf-8")
    ids, offsets = tokenizer.tokenize_with_offsets(text)
    assert ids.tolist() == [p["id"] for p in pieces]
    assert offsets.shape == (len(ids), 2)


def test_the_byte_level_table_is_the_one_tokenizers_spells_with():
    # One table serves both directions: the GGUF reader spells a vocabulary in it, the tokenizer
    # reads token bytes back from it. It must be GPT-2's, as tokenizers' ByteLevel uses.
    text = "".join(map(chr, range(128))) + "é€中🦙\u00ad"
    spelled = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert set(BYTE_TO_UNICODE.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (
        "".join(BYTE_TO_UNICODE[b] for b in text.encode()) == (spelled.pre_tokenize_str(text)[0][0])
    )
    assert byte_level_bytes(spelled.pre_tokenize_str(text)[0][0]) == text.encode()
    assert sorted(UNICODE_TO_BYTE.values()) == list(range(256))


def test_sentencepiece_style_tokenizer_pieces(sentencepiece_style_tokenizer_json):
    # Llama 2 / TinyLlama style vocabularies: "▁" marks spaces, <0xF0> byte-fallback tokens.
    tokenizer = Llama3Tokenizer(
        sentencepiece_style_tokenizer_json, bos_token="<s>", eos_token="</s>"
    )
    pieces = tokenizer.tokenize_pieces("Hello 😀!")
    assert pieces[0]["piece"] == "␣Hello"
    assert b"".join(p["bytes"] for p in pieces) == " Hello 😀!".encode()
    assert [p["piece"] for p in pieces if p["piece"].startswith("<0x")] == [
        "<0xF0>",
        "<0x9F>",
        "<0x98>",
        "<0x80>",
    ]
    assert tokenizer.detokenize(tokenizer("Hello 😀!")) == "Hello 😀!"
    assert tokenizer.special_token_ids == frozenset({1, 2})


# --------------------------------------------------------------------------- parity with transformers


@pytest.mark.reference
def test_ids_match_transformers(llama32_instruct_tokenizer_folder, tokenizer):
    import transformers

    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(llama32_instruct_tokenizer_folder / "tokenizer.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )
    for text in TEXTS:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert tokenizer(text).tolist() == expected, text
        # With special tokens, transformers prepends BOS: what add_bos says the model expects.
        with_special = reference(text)["input_ids"]
        assert with_special == [tokenizer.start_token_id] * tokenizer.add_bos + expected
        assert tokenizer.detokenize(expected) == reference.decode(expected)
    assert reference.bos_token_id == tokenizer.start_token_id
    assert reference.eos_token_id == tokenizer.end_token_id
    assert len(reference) == tokenizer.vocabulary_size()
