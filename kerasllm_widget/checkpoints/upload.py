"""Upload a saved preset folder to the Hugging Face Hub (``hf://user/repo``).

Everything that can be checked without the network is checked first (the URI, the folder, offline
mode, a token), so the common mistakes fail at once with a message that says what to do; network
and permission failures from `huggingface_hub` are translated the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerasllm_widget.checkpoints.presets import HF_SCHEME, hub_offline, parse_hf_uri

__all__ = ["UploadError", "check_upload", "upload_preset"]


class UploadError(RuntimeError):
    """An upload to the Hub could not be done; the message says why and what to do."""


def _is_network_error(error: BaseException) -> bool:
    # huggingface_hub's HTTP client (httpx or its fork) raises its own transport errors; they
    # are recognised by their class names so that no particular client version is imported.
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"TransportError", "RequestError", "ConnectionError", "TimeoutException"})


def _check_folder(preset_dir: Path) -> None:
    if not preset_dir.is_dir():
        raise UploadError(
            f"{preset_dir}: no such folder. Write it first with model.save_to_preset()."
        )
    has_weights = any(preset_dir.glob("*.safetensors"))
    if not (preset_dir / "config.json").exists() or not has_weights:
        raise UploadError(
            f"{preset_dir}: not a model folder (needs config.json and *.safetensors). Write it with "
            "model.save_to_preset(folder)."
        )


def check_upload(uri: str, token: str | None = None) -> tuple[str, str | None, str]:
    """The checks that need no network: a repo URI, not offline, a token. Returns
    ``(repo_id, revision, token)``; raises `UploadError` with what to do otherwise.

    Example:
        >>> check_upload("hf://me/my-llama", token="hf_...")  # doctest: +SKIP
        ('me/my-llama', None, 'hf_...')
    """
    if not str(uri).startswith(HF_SCHEME):
        raise UploadError(f"{uri!r}: upload to a Hugging Face repo written as 'hf://user/repo'.")
    try:
        repo_id, filename, revision = parse_hf_uri(str(uri))
    except ValueError as error:
        raise UploadError(str(error)) from None
    if filename:
        raise UploadError(f"{uri!r}: name a repo ('hf://user/repo'), not a file inside one.")
    if hub_offline():
        raise UploadError(
            f"Cannot upload to {uri}: huggingface_hub is offline (HF_HUB_OFFLINE or "
            "TRANSFORMERS_OFFLINE is set), so the Hugging Face Hub is not contacted. Unset them "
            "before starting Python where there is network access, and try again."
        )
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise UploadError(
            f"Cannot upload to {uri}: no Hugging Face token. Create a token with write access at "
            "https://huggingface.co/settings/tokens, then set HF_TOKEN, run `hf auth login` in a "
            "terminal, or `huggingface_hub.notebook_login()` in a notebook."
        )
    return repo_id, revision, token


def upload_preset(
    uri: str,
    preset_dir: str | os.PathLike,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Uploads ``preset_dir`` to the Hub repo named by ``uri`` and returns the commit URL.

    The repo is created if needed (``private`` applies to a new repo). ``uri`` is
    ``"hf://user/repo"`` or ``"hf://user/repo@branch"``. The token comes from ``token``, else
    ``HF_TOKEN`` or the one saved by ``hf auth login``.

    Example:
        >>> model.save_to_preset("my-model")  # doctest: +SKIP
        >>> upload_preset("hf://me/my-llama", "my-model", private=True)  # doctest: +SKIP
        'https://huggingface.co/me/my-llama/commit/...'
    """
    repo_id, revision, token = check_upload(uri, token)
    preset_dir = Path(preset_dir)
    _check_folder(preset_dir)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    message = commit_message or f"Upload {repo_id} with kerasllm_widget"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(preset_dir),
            commit_message=message,
            revision=revision,
            repo_type="model",
        )
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            hint = "the token is invalid or expired; create a new one and set HF_TOKEN"
        elif status == 403:
            hint = f"the token cannot write to {repo_id!r}; use a token with write access to it"
        else:
            hint = str(error).splitlines()[0]
        raise UploadError(f"Upload to {uri} failed (HTTP {status}): {hint}.") from error
    except Exception as error:
        if not _is_network_error(error):
            raise
        from huggingface_hub import constants

        raise UploadError(
            f"Upload to {uri} failed: the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached "
            f"({error}). Check the network connection (or HF_ENDPOINT) and try again."
        ) from error
    return str(getattr(info, "commit_url", info))
