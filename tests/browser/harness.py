"""End-to-end harness: a Jupyter server on loopback with a token, headless Chromium driven by
Playwright, and helpers to run notebook cells and read the chat panel.

Used by the browser tests beside this file and by ``bench/widget.py``. Chromium is Debian's
(``/usr/bin/chromium``): Playwright's own browser download is not used.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Timers of a page in the background must keep running: the tests read DOM states as they come.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_notebook(path: Path, cells: list[str]) -> Path:
    """Writes a notebook of code cells (nbformat 4) without executing it."""
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell-{i}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    return path


class JupyterServer:
    """`jupyter lab` in a folder, on 127.0.0.1 with a random token; it also serves Notebook 7."""

    def __init__(
        self, root_dir: Path, log_path: Path | None = None, theme: str | None = None
    ) -> None:
        self.root_dir = root_dir
        self.theme = theme  # a JupyterLab theme name, e.g. "JupyterLab Dark" (None: its default)
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.log_path = log_path or (root_dir / "jupyter-server.log")
        self._process: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, notebook: str) -> str:
        return f"{self.base_url}/lab/tree/{notebook}?token={self.token}"

    def notebook7_url(self, notebook: str) -> str:
        return f"{self.base_url}/notebooks/{notebook}?token={self.token}"

    def start(self, timeout: float = 90) -> None:
        env = dict(os.environ)
        # The kernel imports the package from this checkout even where it is not pip-installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.setdefault("KERAS_BACKEND", "jax")
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        env["JUPYTER_RUNTIME_DIR"] = str(self.root_dir / ".jupyter-runtime")
        env["HF_HUB_OFFLINE"] = "1"
        # Its own settings and workspace folder, so no user layout or dialog gets in the way.
        settings = self.root_dir / ".jupyter-settings"
        env["JUPYTERLAB_SETTINGS_DIR"] = str(settings / "settings")
        env["JUPYTERLAB_WORKSPACES_DIR"] = str(settings / "workspaces")
        _write_lab_settings(settings / "settings", self.theme)
        command = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # CI containers run as root
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (kept open while the server runs)
        self._process = subprocess.Popen(
            command,
            cwd=self.root_dir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(
                    f"{self.base_url}/api/status?token={self.token}", timeout=2
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"jupyter lab did not start in {timeout} s; see {self.log_path}")

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Ends every session and its kernel (frees the model's memory between tests)."""
        for session in self.api("GET", "/api/sessions") or []:
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            # The server and the kernels it started share its process group.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if self._log is not None:
            self._log.close()
        self._process = None


def _write_lab_settings(folder: Path, theme: str | None = None) -> None:
    """No announcements or news popup; no autosave dialogs when the test closes; ``theme``
    (JupyterLab and Notebook 7 read the same setting)."""
    plugins: dict[str, dict] = {
        "@jupyterlab/apputils-extension/notification": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    }
    if theme is not None:
        plugins["@jupyterlab/apputils-extension/themes"] = {"theme": theme}
    for plugin, values in plugins.items():
        package, name = plugin.rsplit("/", 1)
        target = folder / package / f"{name}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values), encoding="utf-8")


@contextmanager
def jupyter_server(root_dir: Path, theme: str | None = None) -> Iterator[JupyterServer]:
    server = JupyterServer(root_dir, theme=theme)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# ---- driving a notebook ----


class NotebookPage:
    """A notebook open in JupyterLab or Notebook 7, with helpers that work in both."""

    def __init__(self, page: Any, flavour: str) -> None:
        self.page = page
        self.flavour = flavour  # "lab" or "notebook7"

    def kernel_status(self) -> str:
        return self.page.evaluate(
            """() => document.querySelector('.jp-Notebook-ExecutionIndicator')
                       ?.getAttribute('data-status') || ''"""
        )

    def wait_for_kernel_idle(self, timeout_s: float = 120, stable_s: float = 1.5) -> None:
        """Waits until the kernel shows idle and stays so for `stable_s` (the indicator reads idle
        for a moment before the kernel connects)."""
        self.page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=timeout_s * 1000)
        deadline = time.monotonic() + timeout_s
        idle_since = None
        while time.monotonic() < deadline:
            if self.kernel_status() == "idle":
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= stable_s:
                    return
            else:
                idle_since = None
            time.sleep(0.2)
        raise TimeoutError(f"the kernel was not idle after {timeout_s} s")

    def _prompt(self, index: int) -> str:
        cell = self.page.locator(".jp-Notebook .jp-Cell").nth(index)
        return cell.locator(".jp-InputPrompt").inner_text().strip()

    def run_cell(self, index: int, attempts: int = 3) -> None:
        """Selects cell `index` and runs it with Shift+Enter, as a user does; checks that it started
        (its prompt turns to [*] or a number) and tries again if the key press was lost."""
        cell = self.page.locator(".jp-Notebook .jp-Cell").nth(index)
        before = self._prompt(index)
        for _ in range(attempts):
            cell.locator(".jp-InputPrompt").click()
            self.page.keyboard.press("Escape")  # command mode: Shift+Enter runs the cell
            cell.locator(".jp-InputPrompt").click()
            self.page.keyboard.press("Shift+Enter")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                now = self._prompt(index)
                if now != before and re.search(r"\[(\*|\d+)\]", now):
                    return
                time.sleep(0.1)
        raise RuntimeError(f"cell {index} did not start running (prompt {self._prompt(index)!r})")

    def wait_for_cell(self, index: int, timeout_s: float = 120) -> None:
        """Waits until cell `index` finished running (its prompt shows an execution count)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if re.search(r"\[\d+\]", self._prompt(index)):
                return
            time.sleep(0.2)
        raise TimeoutError(f"cell {index} still running after {timeout_s} s")

    def cell_output_text(self, index: int, contains: str, timeout_s: float = 60) -> str:
        cell = self.page.locator(".jp-Notebook .jp-Cell").nth(index)
        output = cell.locator(".jp-OutputArea-output", has_text=contains).first
        output.wait_for(timeout=timeout_s * 1000)
        return output.inner_text()


def open_notebook(browser: Any, url: str, flavour: str, viewport=(1280, 1000)) -> NotebookPage:
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    notebook = NotebookPage(page, flavour)
    notebook.wait_for_kernel_idle()
    return notebook


@contextmanager
def notebook_session(
    root: Path, name: str, cells: list[str], flavour: str, viewport=(1280, 1200)
) -> Iterator[NotebookPage]:
    """A notebook of ``cells`` written to ``root/name.ipynb``, served and opened in ``flavour``
    (``"lab"`` or ``"notebook7"``); on the way out, a screenshot of the whole page
    (``name-flavour-page.png``), then the browser context and the kernels are closed.

    Example:
        >>> with notebook_session(tmp, "lens", CELLS, "lab") as notebook:  # doctest: +SKIP
        ...     notebook.run_cell(0)
    """
    if chromium_path() is None:
        raise RuntimeError(
            "chromium is not installed (apt-get install chromium); `make test-deps` does it"
        )
    write_notebook(root / f"{name}.ipynb", cells)
    with jupyter_server(root) as server, chromium_browser() as browser:
        path = f"{name}.ipynb"
        url = server.lab_url(path) if flavour == "lab" else server.notebook7_url(path)
        notebook = open_notebook(browser, url, flavour, viewport=viewport)
        try:
            yield notebook
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            notebook.page.screenshot(path=str(ARTIFACTS / f"{name}-{flavour}-page.png"))
            notebook.page.context.close()
            server.shutdown_kernels()


def run_flow(server: JupyterServer, browser: Any, name: str, flavour: str, flow) -> None:
    """Opens ``name-flavour.ipynb`` from ``server`` in ``flavour`` and runs ``flow(notebook,
    flavour)``; a failure leaves a screenshot of the page (``name-flavour-failure-page.png``).
    The browser context and the kernels are closed either way."""
    path = f"{name}-{flavour}.ipynb"
    url = server.lab_url(path) if flavour == "lab" else server.notebook7_url(path)
    notebook = open_notebook(browser, url, flavour)
    try:
        flow(notebook, flavour)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        notebook.page.screenshot(path=str(ARTIFACTS / f"{name}-{flavour}-failure-page.png"))
        raise
    finally:
        notebook.page.context.close()
        server.shutdown_kernels()


# ---- reading the chat panel ----

# Installed in the page: records every distinct text the streaming reply shows, with a timestamp,
# so a test can check that the reply arrived in steps rather than all at once.
RECORDER_JS = """
() => {
  const root = document.querySelector('.kerasllm-widget');
  const states = [];
  window.__kwStates = states;
  let last = null;
  const observer = new MutationObserver(() => {
    const bubble = root.querySelector('.kw-assistant[data-status="streaming"] .kw-markdown');
    if (!bubble) return;
    const text = bubble.textContent || '';
    if (text && text !== last) {
      last = text;
      states.push({ t: performance.now(), text });
    }
  });
  observer.observe(root, { subtree: true, childList: true, characterData: true });
  window.__kwStopRecorder = () => observer.disconnect();
}
"""


def assistant_entries(page: Any, view: int = 0) -> list[dict[str, str]]:
    """The assistant bubbles of one view (the n-th ChatWidget output on the page)."""
    return page.evaluate(
        """(view) => {
            const root = document.querySelectorAll('.kerasllm-widget')[view];
            return [...root.querySelectorAll('.kw-assistant')].map(el => ({
                id: el.dataset.id, status: el.dataset.status,
                text: (el.querySelector('.kw-markdown')?.textContent || '').trim(),
            }));
        }""",
        view,
    )


def screenshot(locator: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    locator.screenshot(path=str(path))
    return path


# ---- colours as drawn ----

# Installed in the page: `window.__kwContrast(root)` lists every visible piece of text under
# `root` whose colour against its effective background (the background colours of it and its
# ancestors, composited, over the page's) falls below WCAG AA: 4.5:1, or 3:1 for large text.
# Disabled controls are exempt, as WCAG exempts them. Colours are read with getComputedStyle,
# as `rgb()`/`rgba()` or, for `color-mix()`, `color(srgb r g b / a)`.
CONTRAST_JS = """
() => {
  const parse = (text) => {
    let m = text.match(/^rgba?\\(([^)]+)\\)$/);
    if (m) {
      const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
      return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    }
    m = text.match(/^color\\(srgb ([^)]+)\\)$/);
    if (m) {
      const p = m[1].split(/[ \\/]+/).filter(Boolean).map(Number);
      return [p[0] * 255, p[1] * 255, p[2] * 255, p.length > 3 ? p[3] : 1];
    }
    return null;
  };
  const over = (top, base) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + base[i] * (1 - a)).concat([1]);
  };
  const background = (el) => {
    const layers = [];
    for (let node = el; node; node = node.parentElement) {
      const c = parse(getComputedStyle(node).backgroundColor);
      if (c && c[3] > 0) layers.push(c);
      if (c && c[3] >= 1) break;
    }
    let colour = [255, 255, 255, 1];
    for (let i = layers.length - 1; i >= 0; i--) colour = over(layers[i], colour);
    return colour;
  };
  const luminance = (c) => {
    const [r, g, b] = [0, 1, 2].map((i) => {
      const v = c[i] / 255;
      return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  window.__kwContrast = (root) => {
    const failures = [];
    let checked = 0;
    for (const el of root.querySelectorAll('*')) {
      // A select shows its chosen option's text; its options are not drawn in the page.
      if (el.tagName === 'OPTION') continue;
      const own = el.tagName === 'SELECT'
        || [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !el.getClientRects().length) continue;
      const style = getComputedStyle(el);
      if (style.visibility === 'hidden' || el.closest(':disabled,[aria-disabled="true"]')) continue;
      const bg = background(el);
      const fg = over(parse(style.color) || [0, 0, 0, 1], bg);
      const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
      const ratio = (hi + 0.05) / (lo + 0.05);
      const size = parseFloat(style.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
      checked += 1;
      if (ratio < (large ? 3 : 4.5)) {
        failures.push({
          text: el.textContent.trim().slice(0, 40), cls: el.className.toString(),
          ratio: Math.round(ratio * 100) / 100, color: style.color, background: `rgb(${bg.slice(0, 3).map(Math.round)})`,
        });
      }
    }
    return { checked, failures };
  };
}
"""


def contrast_failures(page: Any, root_selector: str, index: int = 0) -> dict:
    """``{"checked": n, "failures": [...]}``: the text under the ``index``-th ``root_selector``
    that fails WCAG AA contrast as drawn now (see `CONTRAST_JS`)."""
    page.evaluate(CONTRAST_JS)
    return page.evaluate(
        "([selector, index]) => window.__kwContrast(document.querySelectorAll(selector)[index])",
        [root_selector, index],
    )
