"""Where every widget finds its built front end."""

from __future__ import annotations

import os
from pathlib import Path

_STATIC = Path(__file__).resolve().parent.parent / "static"


def bundle(name: str, kind: str = "js") -> Path | str:
    """The built front end ``static/<name>.<kind>`` (its text; its path under anywidget's hot
    reload, ``ANYWIDGET_HMR=1``), or a stand-in that says how to build it (a
    source checkout before ``npm run build``) instead of failing at import time.

    Example:
        >>> bundle("chat")  # doctest: +SKIP
        PosixPath('.../kerasllm_widget/static/chat.js')
    """
    path = _STATIC / f"{name}.{kind}"
    if path.is_file():
        # The path itself only for hot reload: anywidget then ties every widget made to the
        # file's change signal with a strong reference that is never released, so without
        # hot reload no widget (nor the model it shows) could ever be freed. Text otherwise.
        return path if os.environ.get("ANYWIDGET_HMR") == "1" else path.read_text("utf-8")
    if kind == "css":
        return ""
    return (
        "export default { render({ el }) { el.textContent = 'kerasllm_widget: the "
        + name
        + " front end is not built. Run `npm install && npm run build` in the source folder, "
        "or `pip install -e .`.'; } };"
    )
