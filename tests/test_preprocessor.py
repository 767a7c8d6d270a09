"""Llama3CausalLMPreprocessor: the seed's figures, packing rules, generation inputs, and
assistant-only sample weights for conversations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer

from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor
from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

BOS, EOS = 128000, 128009

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! 😀"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": " Bye. "},
]


@pytest.fixture(scope="module")
def tokenizer(llama32_instruct_tokenizer) -> Llama3Tokenizer:
    return llama32_instruct_tokenizer


@pytest.fixture(scope="module")
def preprocessor(tokenizer) -> Llama3CausalLMPreprocessor:
    return Llama3CausalLMPreprocessor(tokenizer)


@pytest.fixture(scope="module")
def chatml_tokenizer(llama3_tokenizer_json, smollm2_chat_template) -> Llama3Tokenizer:
    """Configured as SmolLM2-Instruct is: ChatML special tokens, its chat template, no BOS."""
    backend = Tokenizer.from_file(str(llama3_tokenizer_json))
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")]
    )
    return Llama3Tokenizer(
        backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        add_bos=False,
        chat_template=smollm2_chat_template,
    )


def weighted_label_text(tokenizer, labels, weights) -> str:
    return tokenizer.detokenize(np.asarray(labels)[np.asarray(weights, dtype=bool)])


# --------------------------------------------------------------------------- the seed's figures


def test_hello_matches_the_seed(preprocessor):
    x, labels, sample_weight = preprocessor("Hello", sequence_length=6)
    assert x["token_ids"].tolist() == [128000, 9906, 128009, 0, 0, 0]
    assert x["token_ids"].dtype == np.int32
    assert x["padding_mask"].tolist() == [True, True, True, False, False, False]
    assert x["padding_mask"].dtype == bool
    assert labels.tolist() == [9906, 128009, 0, 0, 0, 0]
    assert sample_weight.tolist() == [True, True, False, False, False, False]


def test_a_list_is_batched(preprocessor):
    x, labels, sample_weight = preprocessor(["Hello", "Hi!"], sequence_length=6)
    assert x["token_ids"].tolist() == [
        [128000, 9906, 128009, 0, 0, 0],
        [128000, 13347, 0, 128009, 0, 0],
    ]
    assert x["padding_mask"].tolist() == [
        [True, True, True, False, False, False],
        [True, True, True, True, False, False],
    ]
    assert labels.tolist() == [[9906, 128009, 0, 0, 0, 0], [13347, 0, 128009, 0, 0, 0]]
    assert sample_weight.shape == (2, 6)
    # A numpy array of strings is a batch too.
    x_np, _, _ = preprocessor(np.array(["Hello", "Hi!"]), sequence_length=6)
    assert x_np["token_ids"].tolist() == x["token_ids"].tolist()


def test_default_sequence_length(preprocessor):
    x, labels, sample_weight = preprocessor("Hello")
    assert x["token_ids"].shape == labels.shape == sample_weight.shape == (1024,)
    assert preprocessor.sequence_length == 1024


# --------------------------------------------------------------------------- packing rules


def test_special_tokens_are_never_doubled(preprocessor):
    plain = preprocessor("Hello", sequence_length=6)
    written = preprocessor("<|begin_of_text|>Hello<|eot_id|>", sequence_length=6)
    assert written[0]["token_ids"].tolist() == plain[0]["token_ids"].tolist()
    assert written[1].tolist() == plain[1].tolist()


def test_long_text_is_cut_at_the_end_keeping_start_and_end_tokens(preprocessor, tokenizer):
    text = "one two three four five six seven eight nine ten eleven twelve"
    content = tokenizer(text).tolist()
    x, labels, sample_weight = preprocessor(text, sequence_length=8)
    assert x["token_ids"].tolist() == [BOS] + content[:7]
    assert labels.tolist() == content[:7] + [EOS]
    assert x["padding_mask"].all() and sample_weight.all()


def test_start_and_end_tokens_can_be_turned_off(tokenizer):
    no_start = Llama3CausalLMPreprocessor(tokenizer, sequence_length=4, add_start_token=False)
    assert no_start("Hello")[0]["token_ids"].tolist() == [9906, EOS, 0, 0]
    no_end = Llama3CausalLMPreprocessor(tokenizer, sequence_length=4, add_end_token=False)
    assert no_end("Hello")[0]["token_ids"].tolist() == [BOS, 9906, 0, 0]
    assert no_end("Hello")[1].tolist() == [9906, 0, 0, 0]


def test_no_start_token_when_the_tokenizer_does_not_ask(chatml_tokenizer):
    preprocessor = Llama3CausalLMPreprocessor(chatml_tokenizer, sequence_length=4)
    x, labels, _ = preprocessor("Hello")
    im_end = chatml_tokenizer.end_token_id
    assert x["token_ids"].tolist() == [9906, im_end, 0, 0]
    assert labels.tolist() == [im_end, 0, 0, 0]


def test_sample_weight_argument_scales_the_mask(preprocessor):
    _, _, weights = preprocessor(["Hello", "Hi!"], sample_weight=[2.0, 0.5], sequence_length=4)
    assert weights.dtype == np.float32
    assert weights.tolist() == [[2.0, 2.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.0]]


def test_bad_input_is_refused(preprocessor):
    with pytest.raises(ValueError, match="makes its labels from x"):
        preprocessor("Hello", y=np.array([1, 2]))
    with pytest.raises(TypeError, match="takes a string"):
        preprocessor(42)
    with pytest.raises(TypeError, match="must be a string or a conversation"):
        preprocessor(["ok", 3])
    with pytest.raises(ValueError, match="sequence_length must be at least 1"):
        preprocessor("Hello", sequence_length=0)


# --------------------------------------------------------------------------- generation


def test_generate_preprocess(preprocessor):
    single = preprocessor.generate_preprocess("Hello")
    assert single["token_ids"].tolist() == [BOS, 9906]
    assert single["padding_mask"].tolist() == [True, True]
    batch = preprocessor.generate_preprocess(["Hello", "Hi there!"])
    assert batch["token_ids"].tolist() == [[BOS, 9906, 0, 0], [BOS, 13347, 1070, 0]]
    assert batch["padding_mask"].tolist() == [[True, True, False, False], [True, True, True, True]]
    padded = preprocessor.generate_preprocess("Hello", sequence_length=4)
    assert padded["token_ids"].tolist() == [BOS, 9906, 0, 0]
    assert padded["padding_mask"].tolist() == [True, True, False, False]
    # A prompt that already holds BOS keeps its own, and is not padded.
    assert preprocessor.generate_preprocess("<|begin_of_text|>Hello")["token_ids"].tolist() == [
        BOS,
        9906,
    ]


def test_generate_preprocess_of_a_conversation_ends_with_the_assistant_header(
    preprocessor, tokenizer
):
    ids = preprocessor.generate_preprocess(CONVERSATION[:2])["token_ids"].tolist()
    assert ids[0] == BOS and ids.count(BOS) == 1
    assert tokenizer.detokenize(ids).endswith(
        "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_generate_postprocess(preprocessor):
    out = preprocessor.generate_postprocess(
        {
            "token_ids": np.array([BOS, 9906, 0, 128009, 0]),
            "padding_mask": np.array([1, 1, 1, 1, 0]),
        }
    )
    assert out == "Hello!"
    batch = preprocessor.generate_postprocess(
        {
            "token_ids": np.array([[BOS, 9906, 128001, 0], [BOS, 13347, 0, 128008]]),
            "padding_mask": np.array([[True, True, True, False], [True, True, True, True]]),
        }
    )
    assert batch == ["Hello", "Hi!"]


# --------------------------------------------------------------------------- conversations


def test_conversation_weights_only_assistant_turns(preprocessor, tokenizer):
    x, labels, weights = preprocessor(CONVERSATION, sequence_length=96)
    rendered = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    expected_ids = tokenizer(rendered).tolist()
    n = len(expected_ids)
    assert x["token_ids"][:n].tolist() == expected_ids
    assert x["token_ids"][0] == BOS and expected_ids.count(BOS) == 1  # BOS from the template
    assert x["padding_mask"].sum() == n  # no EOS appended: the template ends the last turn
    # The model learns the assistant's words and the end of its turn, nothing else. (The
    # template trims the second answer.)
    assert weighted_label_text(tokenizer, labels, weights) == ("Hello! 😀<|eot_id|>Bye.<|eot_id|>")


def test_batch_of_conversations_and_strings(preprocessor, tokenizer):
    x, labels, weights = preprocessor([CONVERSATION[:3], "Hello"], sequence_length=64)
    assert x["token_ids"].shape == (2, 64)
    assert weighted_label_text(tokenizer, labels[0], weights[0]) == "Hello! 😀<|eot_id|>"
    assert labels[1, :2].tolist() == [9906, EOS] and weights[1].sum() == 2


def test_truncated_conversation_keeps_the_start(preprocessor, tokenizer):
    x, labels, weights = preprocessor(CONVERSATION, sequence_length=40)
    full, full_labels, full_weights = preprocessor(CONVERSATION, sequence_length=96)
    assert x["token_ids"].tolist() == full["token_ids"][:40].tolist()
    assert weights.tolist() == full_weights[:40].tolist()


def test_chatml_conversation_weights(chatml_tokenizer):
    preprocessor = Llama3CausalLMPreprocessor(chatml_tokenizer, sequence_length=128)
    conversation = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome!"},
    ]
    x, labels, weights = preprocessor(conversation)
    im_start = chatml_tokenizer.token_to_id("<|im_start|>")
    assert x["token_ids"][0] == im_start  # no BOS added: SmolLM2 does not ask for one
    assert weighted_label_text(chatml_tokenizer, labels, weights) == (
        "4<|im_end|>\nYou're welcome!<|im_end|>\n"
    )


def test_templates_that_are_not_prefix_stable_fall_back_to_finding_the_content(tokenizer):
    # This template starts with the message count, so shorter conversations do not render as
    # prefixes of longer ones; each assistant content is then found in the text.
    template = (
        "{{ messages | length }}:{% for m in messages %}"
        "<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>{% endfor %}"
    )
    counting = Llama3Tokenizer(tokenizer.backend, eos_token="<|eot_id|>", chat_template=template)
    preprocessor = Llama3CausalLMPreprocessor(counting, sequence_length=32)
    conversation = [
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "Sure."},
        {"role": "assistant", "content": "Yes"},
    ]
    _, labels, weights = preprocessor(conversation)
    assert weighted_label_text(counting, labels, weights) == "Sure.Yes"


@pytest.mark.reference
def test_conversation_ids_match_transformers(preprocessor, llama32_instruct_tokenizer_folder):
    import transformers

    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(llama32_instruct_tokenizer_folder / "tokenizer.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )
    config = json.loads((llama32_instruct_tokenizer_folder / "tokenizer_config.json").read_text())
    reference.chat_template = config["chat_template"]
    for generation in (False, True):
        expected = reference.apply_chat_template(
            CONVERSATION, tokenize=True, add_generation_prompt=generation, return_dict=False
        )
        if generation:
            ours = preprocessor.generate_preprocess(CONVERSATION)["token_ids"].tolist()
        else:
            x, _, _ = preprocessor(CONVERSATION, sequence_length=len(expected))
            ours = x["token_ids"].tolist()
        assert ours == list(expected)


# --------------------------------------------------------------------------- config


def test_config_round_trip(preprocessor):
    config = preprocessor.get_config()
    json.dumps(config)  # serializable, the tokenizer's own config included
    assert config["tokenizer"]["eos_token"] == "<|eot_id|>"
    # The tokenizer's round trip through its JSON is tested in test_tokenizer.py; an existing
    # tokenizer object is accepted too.
    clone = Llama3CausalLMPreprocessor.from_config(
        {**config, "tokenizer": preprocessor.tokenizer, "sequence_length": 6}
    )
    assert clone.sequence_length == 6
    assert clone("Hello")[0]["token_ids"].tolist() == [128000, 9906, 128009, 0, 0, 0]
    assert clone.add_start_token and clone.add_end_token
