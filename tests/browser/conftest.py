"""Fixtures the browser tests share: Debian's Chromium, found or the test fails saying how to
install it, and one headless browser per test module."""

from __future__ import annotations

import harness as H  # tests/browser is on sys.path for the tests beside it
import pytest


@pytest.fixture(scope="session")
def chromium() -> str:
    path = H.chromium_path()
    if path is None:
        pytest.fail(H.MISSING_CHROMIUM)
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    # One Playwright per module: a second one may not start while the first runs.
    with H.chromium_browser() as browser:
        yield browser
