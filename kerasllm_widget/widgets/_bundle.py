"""Where every widget finds its built front end."""

from __future__ import annotations

from pathlib import Path

_STATIC = Path(__file__).resolve().parent.parent / "static"


def bundle(name: str, kind: str = "js") -> Path | str:
    """The built front end ``static/<name>.<kind>``, or a stand-in that says how to build it (a
    source checkout before ``npm run build``) instead of failing at import time.

    Example:
        >>> bundle("chat")  # doctest: +SKIP
        PosixPath('.../kerasllm_widget/static/chat.js')
    """
    path = _STATIC / f"{name}.{kind}"
    if path.is_file():
        return path
    if kind == "css":
        return ""
    return (
        "export default { render({ el }) { el.textContent = 'kerasllm_widget: the "
        + name
        + " front end is not built. Run `npm install && npm run build` in the source folder, "
        "or `pip install -e .`.'; } };"
    )
