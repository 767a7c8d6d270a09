"""Wheel and sdist build hook: every front end that `js/build.mjs` bundles is in the package.

Runs after the jupyter-builder hook (which rebuilds the bundles when a file under `js/` is newer
than them). The list of front ends is read from `js/build.mjs` itself, so a new widget's bundle is
checked without being named a second time here.
"""

from __future__ import annotations

import re
from pathlib import Path

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ModuleNotFoundError:  # imported by tests/test_wheel.py for `bundle_names` alone
    BuildHookInterface = object

ENTRIES = re.compile(r"const entries = \{(?P<body>.*?)\};", re.S)
ENTRY = re.compile(r"^\s*(?P<name>[A-Za-z0-9_]+)\s*:\s*\"(?P<source>[^\"]+)\"", re.M)


def bundle_names(build_script: Path) -> list[str]:
    """The keys of ``entries`` in ``js/build.mjs``: ``["chat", "tokens", ...]``.

    Example:
        >>> bundle_names(Path("js/build.mjs"))[0]  # doctest: +SKIP
        'chat'
    """
    match = ENTRIES.search(build_script.read_text("utf-8"))
    if match is None:
        raise RuntimeError(f"no `const entries = {{...}};` in {build_script}")
    return [m["name"] for m in ENTRY.finditer(match["body"])]


class BundlesBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        build_script = root / "js" / "build.mjs"
        if version == "editable" or not build_script.exists():
            return  # an editable install serves the bundles from the checkout, however old
        static = root / "kerasllm_widget" / "static"
        missing = [
            f"static/{name}.js"
            for name in bundle_names(build_script)
            if not (static / f"{name}.js").is_file() or (static / f"{name}.js").stat().st_size == 0
        ]
        if missing:
            raise RuntimeError(
                f"front-end bundles missing after the build: {', '.join(missing)}; "
                "run `npm install && npm run build`"
            )
