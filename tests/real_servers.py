"""The suite's rule for tests that need a real server it does not start from Python.

Prometheus, the Pushgateway, systemd-analyze and llama.cpp's llama-server are installed or
built by `.ci/run`, which also sets `CI=true`: there a missing one is a failure (CI must never
pass by skipping them); on a developer's machine the test is skipped with the reason and how
to get the server.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """End the test: a failure under CI, a skip with `reason` elsewhere."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
