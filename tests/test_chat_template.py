"""Chat templates render exactly as transformers' `apply_chat_template` does."""

from __future__ import annotations

from datetime import datetime

import pytest

from kerasllm_widget.models.chat_template import (
    LLAMA3_CHAT_TEMPLATE,
    ChatTemplateError,
    compile_chat_template,
    render_chat_template,
    select_chat_template,
)

LLAMA_BOS = "<|begin_of_text|>"
LLAMA_EOS = "<|eot_id|>"

CONVERSATIONS = {
    "system_and_user": [
        {"role": "system", "content": "You  are a helpful assistant"},
        {"role": "user", "content": "Hello "},
    ],
    "several_turns": [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
        {"role": "user", "content": "And of Japan?\n"},
        {"role": "assistant", "content": "  Tokyo.  "},
        {"role": "user", "content": "Thanks! 😀 谢谢"},
    ],
    "no_system": [
        {"role": "user", "content": 'Write <b>bold</b> & "quoted" text.'},
        {"role": "assistant", "content": '<b>bold</b> & "quoted"'},
    ],
    "special_tokens_in_text": [
        {"role": "user", "content": "What does <|eot_id|> mean?"},
        {"role": "assistant", "content": "It ends a turn.", "tool_calls": None},
        {"role": "user", "content": "And <|im_start|>?"},
    ],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def smollm2_template(smollm2_chat_template) -> str:
    """SmolLM2-135M-Instruct's template, read from the real GGUF's metadata with GGUFReader."""
    assert "<|im_start|>" in smollm2_chat_template
    return smollm2_chat_template


@pytest.fixture(scope="module")
def hf_tokenizer(llama3_tokenizer_json):
    """transformers' tokenizer object, only used for its `apply_chat_template`."""
    import transformers

    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(llama3_tokenizer_json), bos_token=LLAMA_BOS, eos_token=LLAMA_EOS
    )


def reference_render(hf_tokenizer, template: str, messages, add_generation_prompt: bool, **extra):
    hf_tokenizer.chat_template = template
    return hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )


# --------------------------------------------------------------------------- parity with transformers


@pytest.mark.reference
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_llama32_template_matches_transformers(
    hf_tokenizer, llama32_instruct_chat_template, conversation, add_generation_prompt
):
    messages = CONVERSATIONS[conversation]
    # A fixed date keeps both renders equal across midnight; strftime_now is tested below.
    expected = reference_render(
        hf_tokenizer,
        llama32_instruct_chat_template,
        messages,
        add_generation_prompt,
        date_string="26 Jul 2024",
    )
    ours = render_chat_template(
        llama32_instruct_chat_template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=LLAMA_BOS,
        eos_token=LLAMA_EOS,
        date_string="26 Jul 2024",
    )
    assert ours == expected
    assert ours.startswith(LLAMA_BOS + "<|start_header_id|>system<|end_header_id|>\n\n")
    assert (
        ours.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") == add_generation_prompt
    )


@pytest.mark.reference
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_smollm2_template_matches_transformers(
    hf_tokenizer, smollm2_template, conversation, add_generation_prompt
):
    messages = CONVERSATIONS[conversation]
    expected = reference_render(hf_tokenizer, smollm2_template, messages, add_generation_prompt)
    ours = render_chat_template(
        smollm2_template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    assert ours == expected
    if messages[0]["role"] != "system":
        assert ours.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


@pytest.mark.reference
def test_llama32_template_with_tools_matches_transformers(
    hf_tokenizer, llama32_instruct_chat_template
):
    # Tools go through the template's `tojson(indent=4)`: non-ASCII kept, no HTML escaping.
    messages = [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Zürich?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Zürich"}},
                }
            ],
        },
        {"role": "tool", "content": {"temperature": "21 °C <sunny>"}},
    ]
    expected = reference_render(
        hf_tokenizer,
        llama32_instruct_chat_template,
        messages,
        True,
        tools=[WEATHER_TOOL],
        date_string="26 Jul 2024",
    )
    ours = render_chat_template(
        llama32_instruct_chat_template,
        messages,
        bos_token=LLAMA_BOS,
        tools=[WEATHER_TOOL],
        date_string="26 Jul 2024",
    )
    assert ours == expected
    assert "Environment: ipython" in ours
    assert '"description": "City name, e.g. Zürich"' in ours
    assert '"temperature": "21 °C <sunny>"' in ours


@pytest.mark.reference
def test_default_template_matches_transformers(hf_tokenizer):
    messages = CONVERSATIONS["several_turns"]
    expected = reference_render(hf_tokenizer, LLAMA3_CHAT_TEMPLATE, messages, True)
    assert render_chat_template(None, messages) == expected


# --------------------------------------------------------------------------- behaviour


def test_default_template_is_the_llama3_header_format():
    messages = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello "},
    ]
    assert render_chat_template(None, messages) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful assistant<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    without_prompt = render_chat_template(None, messages, add_generation_prompt=False)
    assert without_prompt.endswith("Hello<|eot_id|>")
    assert render_chat_template(None, messages, bos_token="").startswith("<|start_header_id|>")


def test_strftime_now_gives_todays_date(llama32_instruct_chat_template):
    before = datetime.now().strftime("%d %b %Y")
    text = render_chat_template(
        llama32_instruct_chat_template, [{"role": "user", "content": "Hi"}], bos_token=LLAMA_BOS
    )
    after = datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {before}\n" in text or f"Today Date: {after}\n" in text
    # The template's own fallback date is only used when strftime_now is missing.
    assert "26 Jul 2024" not in text or before == "26 Jul 2024"


def test_tojson_does_not_escape_html():
    out = render_chat_template(
        "{{ messages[0]['content'] | tojson }}|{{ {'b': 1, 'a': [1, 2]} | tojson(sort_keys=True) }}",
        [{"role": "user", "content": "<a & 'b'> é"}],
    )
    assert out == '"<a & \'b\'> é"|{"a": [1, 2], "b": 1}'


def test_trim_and_lstrip_blocks_and_loop_controls():
    template = (
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
        "{{ m['content'] }};\n"
        "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "{% endfor %}"
    )
    messages = [{"role": "system", "content": "s"}] + [
        {"role": "user", "content": str(i)} for i in range(5)
    ]
    assert render_chat_template(template, messages) == "0;\n1;\n"


def test_none_valued_keys_are_dropped(llama32_instruct_chat_template):
    # With `tool_calls: None` kept, the Llama template would take its tool-call branch and fail.
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "tool_calls": None},
    ]
    out = render_chat_template(
        llama32_instruct_chat_template, messages, add_generation_prompt=False
    )
    assert out.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")


def test_raise_exception_becomes_a_clear_error(llama32_instruct_chat_template):
    # The real template refuses tools when there is no user message to put them in.
    with pytest.raises(ChatTemplateError, match="Cannot put tools in the first user message"):
        render_chat_template(
            llama32_instruct_chat_template,
            [{"role": "system", "content": "s"}],
            tools=[WEATHER_TOOL],
        )


def test_template_errors_name_the_problem():
    with pytest.raises(ChatTemplateError, match=r"does not compile \(line 2\)"):
        render_chat_template("ok\n{% for m in %}", [])
    with pytest.raises(ChatTemplateError, match="failed while rendering 0 message"):
        render_chat_template("{{ messages[0]['content'] }}", [])
    with pytest.raises(TypeError, match="chat message 0 should be a dict"):
        render_chat_template(None, ["hello"])
    # Chat template errors are ValueErrors too, so callers catching bad input catch them.
    assert issubclass(ChatTemplateError, ValueError)


def test_sandbox_blocks_mutation_and_internals():
    with pytest.raises(ChatTemplateError):
        render_chat_template("{{ messages.append(1) }}", [])
    assert render_chat_template("{{ messages.__class__ }}", []) == ""


def test_compiled_templates_are_cached():
    template = "{{ messages | length }} message(s)"
    assert compile_chat_template(template) is compile_chat_template(template)
    assert render_chat_template(template, [{"role": "user", "content": "x"}]) == "1 message(s)"


def test_select_chat_template():
    assert select_chat_template("plain") == "plain"
    assert select_chat_template(None) is None
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    assert select_chat_template(named) == "D"
    assert select_chat_template(named, name="tool_use") == "T"
    assert select_chat_template([{"name": "rag", "template": "R"}]) == "R"


def test_tokenizer_applies_its_checkpoint_template(
    llama32_instruct_tokenizer, llama32_instruct_chat_template
):
    messages = CONVERSATIONS["several_turns"]
    assert llama32_instruct_tokenizer.chat_template == llama32_instruct_chat_template
    assert llama32_instruct_tokenizer.apply_chat_template(
        messages, date_string="26 Jul 2024"
    ) == render_chat_template(
        llama32_instruct_chat_template,
        messages,
        bos_token=LLAMA_BOS,
        eos_token=LLAMA_EOS,
        date_string="26 Jul 2024",
    )
