"""Fault injection: every command that changes a store, killed (SIGKILL-like: `os._exit` in a
forked child, no cleanup runs) or failed (ENOSPC) at each of its filesystem steps in turn. After
each: CURRENT verifies, PREVIOUS (when set) is another verified version, and the same command
run again cleans up, succeeds and leaves a sound store with no leftovers."""

from __future__ import annotations

import errno
import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model_store import (
    build_model,
    collect_garbage,
    derive_version,
    export_graphs,
    prune_to_union,
    publish_version,
    rollback,
    seed_versions,
    set_current,
)
from model_store.store import files as store_files
from tests.conftest import randomize, tiny_spec
from tests.model_store.store_tools import assert_store_sound, leftovers
from tests.model_store.test_artifact import _manifest

pytestmark = pytest.mark.slow  # end-to-end: make test runs it, make test-fast does not

MAX_STEPS = 40  # more than any command takes; a command that finishes stops the sweep
_MODEL = prune_to_union(randomize(build_model(tiny_spec()), 0.5, seed=11)).eval()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1, v2, v3 of `tiny`; CURRENT v3, PREVIOUS v2."""
    root = tmp_path_factory.mktemp("template")
    for seed in range(3):
        model = prune_to_union(randomize(build_model(tiny_spec()), 0.5, seed=seed)).eval()
        publish_version(root, model, _manifest(model), extra_files=export_graphs(model))
    return root


def _seed(store: Path, template: Path) -> Any:
    return seed_versions(template, store.parent / "volume", "tiny")


COMMANDS: dict[str, Callable[[Path, Path], Any]] = {
    "publish": lambda store, _: publish_version(store, _MODEL, _manifest(_MODEL)),
    "derive": lambda store, _: derive_version(store, "tiny", "v3", {"extra.bin": b"measured"}),
    "set-current": lambda store, _: set_current(store, "tiny", "v1"),
    "rollback": lambda store, _: rollback(store, "tiny"),
    "gc": lambda store, _: collect_garbage(store, "tiny", keep=1),
    "seed": _seed,
}


def _failing_at(step: int, fail: Callable[[str], None]) -> dict[str, Callable[..., Any]]:
    """Replacements for the store's file steps that call `fail` at the `step`-th one."""
    count = [0]

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(real)
        def step_then_real(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == step:
                fail(name)
            return real(*args, **kwargs)

        return step_then_real

    return {name: wrap(name, getattr(store_files, name)) for name in store_files.STEPS}


def _killed(command: str, store: Path, template: Path, step: int) -> bool:
    """Run the command in a child that dies at `step`; whether it died (False: it finished)."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, no cleanup on the way out
        code = 0
        try:
            for name, fn in _failing_at(step, lambda _: os._exit(137)).items():
                setattr(store_files, name, fn)
            COMMANDS[command](store, template)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 137), f"{command} failed in the child before step {step}"
    return code == 137


def _full_disk(command: str, store: Path, template: Path, step: int, monkeypatch) -> bool:
    """Run the command with the disk full at `step`; whether the fault was hit."""

    def no_space(name: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", f"{store} ({name})")

    with monkeypatch.context() as patch:
        for name, fn in _failing_at(step, no_space).items():
            patch.setattr(store_files, name, fn)
        try:
            COMMANDS[command](store, template)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return True
    return False


def _check_then_rerun(command: str, store: Path, template: Path) -> None:
    target = store.parent / "volume" if command == "seed" else store
    if (target / "tiny" / "REFS.json").exists():
        assert_store_sound(target, "tiny")
    COMMANDS[command](store, template)  # the next run tidies up and succeeds
    assert_store_sound(target, "tiny")
    assert not leftovers(target, "tiny")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_killed_at_every_step(command: str, template: Path, tmp_path: Path) -> None:
    for step in range(1, MAX_STEPS):
        case = tmp_path / f"step{step}"
        store = Path(shutil.copytree(template, case / "store"))
        if not _killed(command, store, template, step):
            assert step > 1, f"{command} took no filesystem step"
            return
        _check_then_rerun(command, store, template)
    pytest.fail(f"{command} took more than {MAX_STEPS} steps")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_disk_full_at_every_step(
    command: str, template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in range(1, MAX_STEPS):
        case = tmp_path / f"step{step}"
        store = Path(shutil.copytree(template, case / "store"))
        if not _full_disk(command, store, template, step, monkeypatch):
            return
        _check_then_rerun(command, store, template)
    pytest.fail(f"{command} took more than {MAX_STEPS} steps")
