"""The marker for tests that need the CPU decode kernel (`kerasllm_widget/kernels/decode.cc`)."""

from __future__ import annotations

import os
import shutil

import pytest

needs_cpu_kernel = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX") or "c++") is None,
    reason="the CPU kernel is compiled on first use and this machine has no C++ compiler",
)
