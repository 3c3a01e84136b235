"""The store never serves a wrong model: writers serialised, the manifest covered, what is loaded
is what was verified, paths confined, leftovers tidied, every error one line. Each test is one
of the reproductions found by fault injection on copies of a store (issue 27)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model_store import (
    ArtifactError,
    build_model,
    collect_garbage,
    current_version,
    derive_version,
    export_graphs,
    list_versions,
    load_version,
    open_version,
    prune_to_union,
    publish_version,
    rollback,
    seed_versions,
    set_current,
    version_path,
)
from model_store.runtimes.layout import domain_key
from model_store.runtimes.onnx_runtime import OnnxGraphs
from model_store.store import files as store_files
from model_store.store.cli import main
from tests.conftest import randomize, tiny_spec
from tests.model_store.store_tools import (
    assert_store_sound,
    leftovers,
    record_digest,
    republish_manifest,
)
from tests.model_store.test_artifact import _manifest


def _model(seed: int):
    return prune_to_union(randomize(build_model(tiny_spec()), 0.5, seed=seed)).eval()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1, v2, v3 of `tiny`, each with graphs; CURRENT v3, PREVIOUS v2."""
    root = tmp_path_factory.mktemp("template")
    for seed in range(3):
        model = _model(seed)
        publish_version(root, model, _manifest(model), extra_files=export_graphs(model))
    return root


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "store"))


def cli(store: Path, *args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["--store", str(store), "--name", "tiny", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- 1, 2: writers are serialised; CURRENT never moves backwards silently ---


def test_set_current_waits_for_gc_and_never_names_a_deleted_version(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc has picked v1 and is deleting it when `set-current v1` starts: set-current waits for
    the lock, then finds v1 gone; CURRENT never names a deleted version."""
    deleting, blocked = threading.Event(), threading.Event()
    remove, flock = store_files.remove_tree, fcntl.flock

    def slow_remove(path: Path) -> None:
        deleting.set()
        assert blocked.wait(10)  # the other writer is waiting for the lock
        remove(path)

    def watched_flock(fd: int, operation: int) -> None:
        try:
            flock(fd, operation)
        except BlockingIOError:
            if threading.current_thread().name == "set-current":
                blocked.set()
            raise

    monkeypatch.setattr(store_files, "remove_tree", slow_remove)
    monkeypatch.setattr(fcntl, "flock", watched_flock)
    outcome: dict[str, Any] = {}

    def set_v1() -> None:
        assert deleting.wait(10)
        try:
            set_current(store, "tiny", "v1")
        except ArtifactError as exc:
            outcome["error"] = str(exc)

    other = threading.Thread(target=set_v1, name="set-current")
    other.start()
    assert collect_garbage(store, "tiny", keep=1)[0] == ["v1"]
    other.join(10)
    assert "no such version" in outcome["error"]
    assert current_version(store, "tiny") == "v3"
    assert_store_sound(store, "tiny")


def test_gc_refuses_an_unreadable_record_and_deletes_nothing(store: Path, capsys) -> None:
    refs = store / "tiny" / "REFS.json"
    refs.write_bytes(refs.read_bytes().replace(b'"current": "v3"', b'"current": "v3\\u0000"'))
    code, _, err = cli(store, "gc", "--keep", "1", capsys=capsys)
    assert code == 1 and "REFS.json: unreadable store record" in err and len(err.splitlines()) == 1
    assert all((store / "tiny" / v).is_dir() for v in ("v1", "v2", "v3"))


def test_two_writers_from_the_same_version_never_lose_one(store: Path) -> None:
    """Two commands both started from CURRENT v3 (two remove-domains): the first publishes v4
    and makes it CURRENT; the second publishes v5, finds CURRENT moved and leaves it, saying
    so. Nothing is lost and CURRENT never goes back."""
    model = _model(5)
    first = publish_version(store, model, _manifest(model), expect_current="v3")
    second = publish_version(store, model, _manifest(model), expect_current="v3")
    assert (first.version, first.current) == ("v4", "v4")
    assert (second.version, second.current) == ("v5", "v4")
    assert "CURRENT moved from v3 to v4" in second.note and "set-current v5" in second.note
    assert list_versions(store, "tiny") == ["v1", "v2", "v3", "v4", "v5"]
    assert_store_sound(store, "tiny")


def test_concurrent_writers_of_every_kind_leave_a_sound_store(store: Path) -> None:
    model = _model(6)
    jobs = [
        lambda: publish_version(store, model, _manifest(model)),
        lambda: derive_version(store, "tiny", "v2", {"notes.txt": b"x"}),
        lambda: set_current(store, "tiny", "v1"),
        lambda: rollback(store, "tiny"),
        lambda: collect_garbage(store, "tiny", keep=2),
    ] * 2
    errors: list[BaseException] = []

    def run(job) -> None:
        try:
            job()
        except ArtifactError as exc:  # e.g. set-current to a version gc removed: refused
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all("no such version" in str(e) or "no PREVIOUS" in str(e) for e in errors), errors
    assert_store_sound(store, "tiny")
    assert not leftovers(store, "tiny")


# --- 4, 5: the manifest is covered; what is loaded is what was verified ---


@pytest.mark.parametrize(
    ("old", "new"), [(b'"c0"', b'"cX"'), (b'"budget": 0.5', b'"budget": 0.25'), (b'"v3"', b'"v2"')]
)
def test_an_edited_manifest_is_refused(store: Path, old: bytes, new: bytes, capsys) -> None:
    path = store / "tiny" / "v3" / "manifest.json"
    assert old in path.read_bytes()
    path.write_bytes(path.read_bytes().replace(old, new))
    with pytest.raises(ArtifactError, match="SHA-256 differs from the one published for v3"):
        open_version(store, "tiny")
    code, _, err = cli(store, "verify", capsys=capsys)
    assert code == 1 and "edited or replaced after publishing" in err


def test_a_manifest_that_lies_about_its_version_or_labels_is_refused(store: Path) -> None:
    """Even with its digest recorded (a buggy writer): the version must be its folder's, and
    each graph's output width the domain's label count."""
    republish_manifest(store, "tiny", "v3", lambda m: m.update(version="v2"))
    with pytest.raises(ArtifactError, match="says tiny v2, but lies in tiny/v3"):
        open_version(store, "tiny")
    republish_manifest(store, "tiny", "v3", lambda m: m.update(version="v3"))
    republish_manifest(store, "tiny", "v3", lambda m: m["spec"]["domains"][2]["labels"].pop())
    with pytest.raises(ArtifactError, match="dom2.onnx: outputs 5 logits, the manifest has 4"):
        OnnxGraphs(open_version(store, "tiny"))
    with pytest.raises(
        ArtifactError, match="mixed.onnx: outputs 12 logits, the manifest has 11 labels"
    ):
        OnnxGraphs(open_version(store, "tiny"), domain_graphs="union")


def test_the_graph_loaded_is_the_one_verified(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dom0's graph is replaced on disk by dom1's (an atomic `mv`) right after it was read and
    checked: the session still runs the bytes that were checked, dom0's network."""
    stored = open_version(store, "tiny")
    folder, read = stored.folder, store_files.read_file
    a, b = folder / domain_key("dom0"), folder / domain_key("dom1")

    def read_then_swap(where: Path, key: str, limit: int | None = None) -> bytes:
        data = read(where, key, limit)
        if key == domain_key("dom0"):
            shutil.copy(b, a.with_suffix(".tmp"))
            os.rename(a.with_suffix(".tmp"), a)
        return data

    monkeypatch.setattr(store_files, "read_file", read_then_swap)
    graphs = OnnxGraphs(stored, threads=1)
    x = torch.randn(2, 3, 16, 16)
    _, model = load_version(store, "tiny", "v3")
    with torch.no_grad():
        np.testing.assert_allclose(graphs.run_domain("dom0", x.numpy()), model(x, 0), atol=1e-4)


# --- 6: paths are confined; names are strict ---


@pytest.mark.parametrize(
    "key", ["../../outside/secret.txt", "/etc/shadow", "graphs/../x", ".hidden"]
)
def test_a_manifest_key_outside_the_version_is_refused(store: Path, key: str) -> None:
    outside = store / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_bytes(b"secret")
    outside.chmod(0o600)
    entry = {"sha256": "0" * 64, "bytes": 6}
    republish_manifest(store, "tiny", "v3", lambda m: m["files"].update({key: entry}))
    with pytest.raises(ArtifactError, match="not a plain relative path") as info:
        open_version(store, "tiny")
    assert "bytes" not in str(info.value)  # nothing about the target is told
    assert outside.stat().st_mode & 0o777 == 0o600


def test_symlinks_are_never_followed(store: Path, tmp_path: Path) -> None:
    graph = store / "tiny" / "v3" / domain_key("dom0")
    elsewhere = tmp_path / "elsewhere.onnx"
    shutil.move(graph, elsewhere)
    graph.symlink_to(elsewhere)  # same bytes, so only the link itself can be refused
    with pytest.raises(ArtifactError, match="the store follows no symlink"):
        open_version(store, "tiny").verify()
    folder = store / "tiny" / "v2"
    shutil.move(folder, tmp_path / "v2-outside")
    folder.symlink_to(tmp_path / "v2-outside")
    with pytest.raises(ArtifactError, match="the store follows no symlink"):
        open_version(store, "tiny", "v2")


@pytest.mark.parametrize("name", ["v03", "v3\n", "v\u0663", "v0", "../v3", "V3"])
def test_version_names_are_strict(store: Path, name: str) -> None:
    with pytest.raises(ArtifactError, match="is not a version name"):
        version_path(store, "tiny", name)


def test_seed_from_a_store_listing_an_escaping_path_writes_nothing_outside(
    store: Path, tmp_path: Path
) -> None:
    republish_manifest(store, "tiny", "v3", lambda m: m["files"].update(
        {"../../../ESCAPED.txt": {"sha256": "0" * 64, "bytes": 1}}
    ))  # fmt: skip
    volume = tmp_path / "deep" / "volume"
    with pytest.raises(ArtifactError, match="not a plain relative path"):
        seed_versions(store, volume, "tiny")
    assert not list(tmp_path.rglob("ESCAPED.txt"))
    assert list_versions(volume, "tiny") == ["v1", "v2"] and not leftovers(volume, "tiny")


# --- 7: malformed or huge manifests: one line, and one bad version hides nothing ---


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(domains=[]), "domains must be an object"),
        (lambda m: m.update(budget="0.5"), "budget must be a finite number"),
        (lambda m: m.update(budget=7), "budget must be in"),
        (lambda m: m["files"]["weights.safetensors"].update(bytes="9"), "not a byte count"),
        (lambda m: m.update(extra={"a": [[[[[]]]]]}), "unknown fields"),
    ],
)
def test_a_malformed_manifest_is_one_line(store: Path, edit, message: str, capsys) -> None:
    republish_manifest(store, "tiny", "v3", edit)
    code, _, err = cli(store, "verify", capsys=capsys)
    assert code == 1 and message in err and len(err.splitlines()) == 1


def test_a_deeply_nested_or_huge_manifest_is_refused_before_parsing(store: Path, capsys) -> None:
    path = store / "tiny" / "v3" / "manifest.json"
    for raw in (b"[" * 200_000 + b"]" * 200_000, b" " * (5 << 20) + b"{}"):
        path.write_bytes(raw)
        record_digest(store, "tiny", "v3", raw)
        code, _, err = cli(store, "verify", capsys=capsys)
        assert code == 1 and len(err.splitlines()) == 1
        assert "nested too deeply" in err or "over the 4194304-byte limit" in err


def test_one_bad_version_never_hides_the_others(store: Path, capsys) -> None:
    (store / "tiny" / "v1" / "manifest.json").write_text("{broken")
    code, out, _ = cli(store, "list", capsys=capsys)
    assert code == 0 and "v1        unreadable" in out and "* v3" in out and "  v2" in out


def test_the_server_refuses_a_bad_manifest_at_start_in_one_line(store: Path) -> None:
    from server.startup import load_model
    from tests.server.conftest import settings_for

    republish_manifest(store, "tiny", "v3", lambda m: m.update(budget="lots"))
    with pytest.raises(SystemExit) as info:
        load_model(settings_for(store))
    first = str(info.value).splitlines()[0]
    assert "budget must be a finite number" in first and "Traceback" not in str(info.value)


# --- 8: leftovers of killed commands are removed by the next one ---


def test_the_next_command_removes_what_a_killed_one_left(store: Path, capsys) -> None:
    root = store / "tiny"
    for hidden in (".publish-abc", ".seed-def", ".trash-v1-0123"):
        (root / hidden).mkdir()
        (root / hidden / "weights.safetensors").write_bytes(b"half")
    (root / ".REFS.json.1234").write_bytes(b"half a record")
    refs = json.loads((root / "REFS.json").read_text())
    refs["versions"]["v9"] = "0" * 64  # listed, its folder never appeared
    (root / "REFS.json").write_text(json.dumps(refs))
    assert cli(store, "set-current", "v2", capsys=capsys)[0] == 0
    assert not leftovers(store, "tiny")
    assert list_versions(store, "tiny") == ["v1", "v2", "v3"]
    assert_store_sound(store, "tiny")


# --- 9: a full disk is one line naming the file ---


class _FullDisk:
    """`os` as the store's file steps see it, with every write failing as on a full disk."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_naming_the_file(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(store_files, "os", _FullDisk())
    code, _, err = cli(store, "set-current", "v1", capsys=capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: set-current: ") and ".REFS.json." in err
    assert err.rstrip().endswith("No space left on device")
    monkeypatch.undo()
    assert current_version(store, "tiny") == "v3" and not leftovers(store, "tiny")
    assert cli(store, "set-current", "v1", capsys=capsys)[0] == 0
    assert not leftovers(store, "tiny")
