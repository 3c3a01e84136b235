"""server.allocator: glibc's mmap threshold is fixed unless the operator already chose one.

Each case runs in a fresh interpreter: mallopt changes the whole process, and the tests after
this one must not inherit it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from server.allocator import THRESHOLD_ENV

CALL = "from server.allocator import return_large_frees; print(return_large_frees())"


def _returns(env: dict[str, str]) -> str:
    run = subprocess.run(
        [sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True
    )
    return run.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_sets_the_threshold_on_glibc() -> None:
    env = {k: v for k, v in os.environ.items() if k != THRESHOLD_ENV}
    assert _returns(env) == "True"


def test_an_operators_threshold_wins() -> None:
    assert _returns({**os.environ, THRESHOLD_ENV: "65536"}) == "False"
