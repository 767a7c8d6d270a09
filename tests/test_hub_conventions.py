"""Hugging Face conventions, as transformers and huggingface_hub follow them: which files a Hub
download brings, chat templates (``chat_template.jinja``, ``{% generation %}``, the keywords of
``apply_chat_template``), offline mode, login hints, the fsspec ``@revision`` form, the sampling
defaults of ``generation_config.json`` and the model card of a saved model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kerasllm_widget.checkpoints.errors import PresetError
from kerasllm_widget.checkpoints.presets import (
    HUB_DOWNLOAD_PATTERNS,
    load_checkpoint,
    parse_hf_uri,
)
from kerasllm_widget.checkpoints.upload import UploadError, check_upload
from kerasllm_widget.generation import settings
from kerasllm_widget.models.chat_template import render_chat_template
from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM
from tests.test_smollm2 import write_hf_cache
from tests.tiny_llama import tiny_causal_lm

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue"},
]
GENERATION_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<|eot_id|>{% endgeneration %}"
    "{% else %}{{ m.content }}<|eot_id|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny model saved as a Hugging Face folder, with a Llama 3.2 Instruct-like card and
    generation config."""
    folder = tmp_path_factory.mktemp("hub") / "tiny"
    tiny_causal_lm(seed=2).save_to_preset(folder)
    (folder / "README.md").write_text(
        "---\nlicense: llama3.2\nlanguage:\n- en\n---\n\n# The source model\n", encoding="utf-8"
    )
    config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    config.update(do_sample=True, temperature=0.6, top_p=0.9)
    (folder / "generation_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline huggingface_hub cache the test fills (huggingface_hub's own settings)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- downloads


def test_a_hub_download_brings_jinja_templates_and_the_card_not_other_weights():
    # The filter snapshot_download applies to a repo's file list (huggingface_hub's own).
    from huggingface_hub.utils import filter_repo_objects

    files = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "chat_template.jinja",
        "README.md",
        "original/consolidated.00.pth",
        "model.Q4_0.gguf",
        "LICENSE.txt",
    ]
    kept = set(filter_repo_objects(files, allow_patterns=list(HUB_DOWNLOAD_PATTERNS)))
    assert kept == set(files[:6])


def test_a_chat_template_only_in_chat_template_jinja_is_used(saved, hub_cache, tmp_path):
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    folder = tmp_path / "transformers5"
    folder.mkdir()
    for source in saved.iterdir():
        if source.name == "tokenizer_config.json":
            config = json.loads(source.read_text(encoding="utf-8"))
            config.pop("chat_template", None)
            (folder / source.name).write_text(json.dumps(config), encoding="utf-8")
        else:
            (folder / source.name).write_bytes(source.read_bytes())
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    write_hf_cache(hub_cache, "someone/tiny-t5", sorted(folder.iterdir()))
    model = Llama3CausalLM.from_preset("hf://someone/tiny-t5")
    assert model.tokenizer.apply_chat_template(MESSAGES[:1]) == "[user] Name a colour.\n"


def test_a_bare_repo_id_is_read_from_the_hub(saved, hub_cache):
    write_hf_cache(hub_cache, "someone/tiny-bare", sorted(saved.iterdir()))
    model = Llama3CausalLM.from_preset("someone/tiny-bare")  # as transformers' from_pretrained
    assert model.backbone.num_layers == 2 and model.card["base_model"] == "someone/tiny-bare"
    with pytest.raises(PresetError, match=r"'someone/missing' is no local file or folder.*hf://"):
        load_checkpoint("someone/missing")


def test_the_fsspec_revision_form():
    assert parse_hf_uri("hf://org/name@v1.0/model.Q4_0.gguf") == (
        "org/name",
        "model.Q4_0.gguf",
        "v1.0",
    )
    assert parse_hf_uri("hf://org/name@refs%2Fpr%2F3") == ("org/name", None, "refs/pr/3")
    assert parse_hf_uri("hf://org/name/sub/model.gguf@main") == (
        "org/name",
        "sub/model.gguf",
        "main",
    )


# --------------------------------------------------------------------------- offline and login


def _in_subprocess(code: str, **env: str) -> subprocess.CompletedProcess:
    # huggingface_hub reads its offline setting at import, so a fresh interpreter is needed.
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    environment.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120
    )


def test_transformers_offline_is_honoured_through_huggingface_hub(tmp_path):
    code = (
        "from kerasllm_widget.checkpoints.presets import load_checkpoint\n"
        "try:\n"
        "    load_checkpoint('hf://someone/not-cached')\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    result = _in_subprocess(
        code, TRANSFORMERS_OFFLINE="1", HF_HUB_CACHE=str(tmp_path), HF_ENDPOINT="http://127.0.0.1:9"
    )
    assert "PresetError" in result.stdout, result.stderr
    assert "huggingface_hub is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE" in result.stdout


def test_login_hints_name_hf_auth_login_and_notebook_login(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(UploadError) as error:
        check_upload("hf://me/model")
    assert "`hf auth login`" in str(error.value) and "notebook_login()" in str(error.value)
    assert (
        "huggingface-cli" not in Path(ROOT / "kerasllm_widget/checkpoints/presets.py").read_text()
    )


# --------------------------------------------------------------------------- chat templates


def test_the_generation_block_renders_its_body():
    with_block = render_chat_template(GENERATION_TEMPLATE, MESSAGES, add_generation_prompt=False)
    plain = render_chat_template(
        GENERATION_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", ""),
        MESSAGES,
        add_generation_prompt=False,
    )
    assert with_block == plain and "Blue<|eot_id|>" in with_block


@pytest.mark.reference
def test_apply_chat_template_keywords_as_transformers(
    llama32_instruct_tokenizer, llama32_instruct_tokenizer_folder
):
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(llama32_instruct_tokenizer_folder)
    ours = llama32_instruct_tokenizer
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    same = dict(date_string="26 Jul 2024")
    for options in (
        dict(add_generation_prompt=True),
        dict(add_generation_prompt=False, continue_final_message=True),
        dict(add_generation_prompt=True, tools=tools),
    ):
        text = ours.apply_chat_template(MESSAGES, **options, **same)
        assert text == theirs.apply_chat_template(MESSAGES, tokenize=False, **options, **same)
        ids = ours.apply_chat_template(MESSAGES, tokenize=True, **options, **same)
        expected = theirs.apply_chat_template(MESSAGES, tokenize=True, **options, **same)
        assert ids == list(getattr(expected, "input_ids", expected))
    assert text.rstrip().endswith("<|start_header_id|>assistant<|end_header_id|>")
    cont = ours.apply_chat_template(
        MESSAGES, add_generation_prompt=False, continue_final_message=True
    )
    assert cont.endswith("Blue")
    as_dict = ours.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)
    assert as_dict["attention_mask"] == [1] * len(as_dict["input_ids"])
    with_generation = ours.apply_chat_template(
        MESSAGES, chat_template=GENERATION_TEMPLATE, add_generation_prompt=False
    )
    assert with_generation == theirs.apply_chat_template(
        MESSAGES, chat_template=GENERATION_TEMPLATE, tokenize=False, add_generation_prompt=False
    )
    with pytest.raises(ValueError, match="continue_final_message.*add_generation_prompt"):
        ours.apply_chat_template(MESSAGES, continue_final_message=True)


# --------------------------------------------------------------------------- generation config


def test_generation_config_sampling_defaults_start_the_chat_and_are_saved(saved, tmp_path):
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    model = Llama3CausalLM.from_preset(str(saved))
    assert model.generation_config == {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
    chat = ChatWidget(model)
    chosen = ChatWidget(model, temperature=0.2)
    try:
        assert (chat.temperature, chat.top_p) == (0.6, 0.9)
        assert (chosen.temperature, chosen.top_p) == (0.2, 0.9)  # what the user passed wins
    finally:
        chat.close()
        chosen.close()
    model.save_to_preset(tmp_path / "again")
    written = json.loads((tmp_path / "again" / "generation_config.json").read_text())
    assert written["do_sample"] is True and written["temperature"] == 0.6
    assert written["top_p"] == 0.9 and "eos_token_id" in written
    assert settings.sampling_defaults({"do_sample": False, "temperature": 0.6}) == {
        "temperature": 0.0
    }


# --------------------------------------------------------------------------- model card


def test_a_saved_model_has_a_card_with_the_source_licence(saved, hub_cache, tmp_path):
    from huggingface_hub import ModelCard

    write_hf_cache(hub_cache, "someone/tiny-src", sorted(saved.iterdir()))
    model = Llama3CausalLM.from_preset("hf://someone/tiny-src")
    model.save_to_preset(tmp_path / "mine")
    card = ModelCard.load(tmp_path / "mine" / "README.md")
    assert card.data.license == "llama3.2" and card.data.language == ["en"]
    assert card.data.base_model == "someone/tiny-src"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert 'Llama3CausalLM.from_preset("hf://' in card.text
    # A card already in the folder is the user's: a later save leaves it.
    (tmp_path / "mine" / "README.md").write_text("my own card", encoding="utf-8")
    model.save_to_preset(tmp_path / "mine")
    assert (tmp_path / "mine" / "README.md").read_text(encoding="utf-8") == "my own card"


def test_a_gguf_licence_reaches_the_card(smollm2_gguf, tmp_path):
    ckpt = load_checkpoint(str(smollm2_gguf))
    ckpt.close()
    assert ckpt.card.get("license") == "apache-2.0"
