"""Model cards: what a checkpoint's card says about it (licence, base model), and the card
written beside a saved model so that the Hub page of an upload names them.

Cards are read and written with `huggingface_hub.ModelCard`, the Hub's own format (YAML metadata
between ``---`` lines, then Markdown).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CARD_FILE", "card_metadata", "model_card_text"]

CARD_FILE = "README.md"

# The card keys carried from a source checkpoint to a model saved from it.
_CARRIED = ("license", "license_name", "license_link", "language")


def card_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The metadata of ``folder/README.md`` a checkpoint came with (``license``,
    ``license_name``, ``license_link``, ``language``), or {} when it has no card. A card
    whose metadata cannot be read is treated as none: the card never stops a model loading.

    Example:
        >>> card_metadata("/nonexistent-folder")
        {}
    """
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(path, ignore_metadata_errors=True).data.to_dict()
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return {key: data[key] for key in _CARRIED if data.get(key)}


def model_card_text(
    card: dict[str, Any], base_model: str | None, model_name: str, repo_id: str | None = None
) -> str:
    """The ``README.md`` of a saved model: Hub metadata (licence carried from the source, base
    model, library, pipeline) and a usage snippet for transformers and this package.

    Example:
        >>> print(model_card_text({"license": "apache-2.0"}, "org/base", "my-model")[:24])
        ---
        base_model: org/base
    """
    from huggingface_hub import ModelCard, ModelCardData

    # Plain JSON types only: YAML would write a Keras-tracked list (a model attribute) as an
    # object tag that no YAML reader accepts.
    card = json.loads(json.dumps(dict(card)))
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["llama", "kerasllm-widget", "keras"],
        **{key: value for key, value in card.items() if key in _CARRIED},
    )
    repo = repo_id or model_name
    licence = card.get("license_name") or card.get("license")
    body = f"""
# {model_name}

A Llama model saved with [kerasllm_widget](https://pypi.org/project/kerasllm-widget/) in the
Hugging Face layout (safetensors weights, tokenizer and chat template), so transformers and
kerasllm_widget both load it.{f" Fine-tuned from [{base_model}](https://huggingface.co/{base_model})." if base_model else ""}

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForCausalLM.from_pretrained("{repo}")
```

```python
from kerasllm_widget import ChatWidget, Llama3CausalLM

model = Llama3CausalLM.from_preset("hf://{repo}")
ChatWidget(model)
```

## License

{f"{licence}, as the model it was made from." if licence else "Not stated: see the license of the model it was made from."}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content
