"""The real SmolLM2-135M-Instruct against the reference, from its GGUF and through `hf://`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kerasllm_widget.checkpoints.presets import load_checkpoint
from kerasllm_widget.models.llama3_backbone import Llama3Backbone

pytestmark = pytest.mark.reference

PROMPTS = [
    "Hi there!",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Les modèles de langue prédisent le prochain mot. 🤗",
]


@pytest.fixture(scope="module")
def reference(smollm2_reference):
    return smollm2_reference


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
    return Llama3Backbone.from_checkpoint(load_checkpoint(str(smollm2_gguf)), progress=False)


def logits_of(backbone, ids):
    hidden, _, _ = backbone.forward_stack(np.asarray([ids], "int32"))
    return np.asarray(backbone.token_embedding(hidden, reverse=True))[0]


def test_gguf_logits_match_reference(reference, ours):
    import torch

    model, tokenizer = reference
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].numpy()
        actual = logits_of(ours, ids)
        assert np.abs(actual - expected).max() < 1e-3, prompt
        assert (actual.argmax(-1) == expected.argmax(-1)).all()


def write_hf_folder(model, tokenizer, folder):
    """A plain Hugging Face folder of the GGUF's weights, dequantized to float32.

    transformers refuses `save_pretrained` on a model loaded from GGUF, so the files are written
    with the same libraries it uses: safetensors for the weights, its config and tokenizer savers.
    """
    from safetensors.torch import save_file

    folder.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)


def write_hf_cache(cache, repo_id, folder_files, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<commit>/}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for source in folder_files:
        (snapshot / source.name).write_bytes(source.read_bytes())
    return snapshot


def test_hf_uri_resolves_from_offline_cache(reference, ours, tmp_path, monkeypatch):
    from huggingface_hub import constants

    model, tokenizer = reference
    export = tmp_path / "export"
    write_hf_folder(model, tokenizer, export)
    cache = tmp_path / "hub"
    write_hf_cache(cache, "HuggingFaceTB/SmolLM2-135M-Instruct", sorted(export.iterdir()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    ckpt = load_checkpoint("hf://HuggingFaceTB/SmolLM2-135M-Instruct")
    assert ckpt.source.startswith(str(cache))
    assert ckpt.tokenizer_json is not None and "chat_template" in ckpt.tokenizer_config
    from_hub = Llama3Backbone.from_checkpoint(ckpt, progress=False)
    ids = tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(logits_of(from_hub, ids), logits_of(ours, ids), atol=1e-5)
    # A revision that is not cached is refused with the offline message, not a download attempt.
    with pytest.raises(Exception, match="not in the Hugging Face cache"):
        load_checkpoint("hf://HuggingFaceTB/SmolLM2-135M-Instruct@other-branch")
