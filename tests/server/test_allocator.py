"""server.allocator: glibc's mmap threshold is fixed unless the operator already chose one."""

from __future__ import annotations

import platform

import pytest

from server.allocator import THRESHOLD_ENV, return_large_frees


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_sets_the_threshold_on_glibc() -> None:
    assert return_large_frees() is True


def test_an_operators_threshold_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THRESHOLD_ENV, "65536")
    assert return_large_frees() is False
