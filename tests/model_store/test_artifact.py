"""Stored versions round-trip bit-exactly and anything damaged is refused with a clear reason."""

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from model_store import (
    ArtifactError,
    DomainMetrics,
    Manifest,
    build_model,
    current_version,
    list_versions,
    load_version,
    prune_to_union,
    publish_version,
    set_current,
    version_path,
)
from model_store.store.artifact import WEIGHTS
from tests.conftest import randomize, tiny_spec
from tests.model_store.store_tools import leftovers, record_digest, republish_manifest


def _manifest(model, name: str = "tiny") -> Manifest:
    return Manifest(
        name=name,
        spec=model.spec,
        budget=0.5,
        budget_unit="macs",
        domains={d: DomainMetrics(0.5, 10, 20, 0.4) for d in model.spec.domain_names},
        totals={"parameters": 1.0},
    )


@pytest.fixture
def published(tmp_path: Path):
    model = prune_to_union(randomize(build_model(tiny_spec()), 0.5))
    version = publish_version(tmp_path, model, _manifest(model)).version
    return tmp_path, model, version


def test_round_trip_is_bit_exact(published) -> None:
    store, model, version = published
    manifest, loaded = load_version(store, "tiny")
    assert manifest.version == version == "v1"
    assert manifest.spec == model.spec
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_flipped_byte_is_refused(published) -> None:
    store, _, version = published
    weights = store / "tiny" / version / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_version(store, "tiny")


def test_truncated_file_is_refused(published) -> None:
    store, _, version = published
    weights = store / "tiny" / version / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated"):
        load_version(store, "tiny")


def test_missing_weights_are_refused(published) -> None:
    store, _, version = published
    (store / "tiny" / version / WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_version(store, "tiny")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=99), "format_version 99"),
        (lambda m: m.pop("spec"), "malformed"),
        (lambda m: m["domains"].pop("dom0"), "other domains"),
    ],
)
def test_bad_manifest_is_refused(published, edit, message: str) -> None:
    store, _, version = published
    republish_manifest(store, "tiny", version, edit)
    with pytest.raises(ArtifactError, match=message):
        load_version(store, "tiny")


def test_manifest_that_is_not_json_names_the_file(published) -> None:
    store, _, version = published
    path = store / "tiny" / version / "manifest.json"
    path.write_text("{not json")
    record_digest(store, "tiny", version, path.read_bytes())
    with pytest.raises(ArtifactError, match="manifest.json: not valid JSON"):
        load_version(store, "tiny")


def test_weights_of_another_shape_are_refused(published, tmp_path: Path) -> None:
    store, _, version = published
    other = build_model(tiny_spec(width=0.5))
    publish_version(tmp_path / "o", other, _manifest(other))
    src = tmp_path / "o" / "tiny" / "v1"
    folder = store / "tiny" / version
    (folder / WEIGHTS).write_bytes((src / WEIGHTS).read_bytes())
    files = json.loads((src / "manifest.json").read_text())["files"]
    republish_manifest(store, "tiny", version, lambda m: m.update(files=files))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_version(store, "tiny")


def test_versions_increment_and_current_moves(published) -> None:
    store, model, _ = published
    v2 = publish_version(store, model, _manifest(model)).version
    assert (v2, list_versions(store, "tiny"), current_version(store, "tiny")) == (
        "v2",
        ["v1", "v2"],
        "v2",
    )
    v3 = publish_version(store, model, _manifest(model), make_current=False).version
    assert current_version(store, "tiny") == "v2"
    set_current(store, "tiny", v3)
    assert current_version(store, "tiny") == "v3"
    with pytest.raises(ArtifactError, match="no such version"):
        set_current(store, "tiny", "v9")
    assert not leftovers(store, "tiny")


def test_concurrent_publishes_get_distinct_versions(published) -> None:
    store, model, _ = published
    got: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: got.append(publish_version(store, model, _manifest(model)).version)
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ["v2", "v3", "v4", "v5"]
    for v in got:
        load_version(store, "tiny", v)


def test_current_is_never_half_written(published, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between writing and renaming leaves the old pointer intact and no debris."""
    store, model, _ = published
    publish_version(store, model, _manifest(model), make_current=False)

    def crash(*args, **kwargs):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        set_current(store, "tiny", "v2")
    assert current_version(store, "tiny") == "v1"
    assert sorted(p.name for p in (store / "tiny").iterdir()) == [".lock", "REFS.json", "v1", "v2"]


def test_missing_store_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="publish a version first"):
        version_path(tmp_path, "nothing")
    with pytest.raises(ArtifactError, match="not a model name"):
        version_path(tmp_path, "../etc")


def test_published_files_are_readable_by_other_users(published) -> None:
    """A server may run as another user than the trainer (e.g. a container reading a volume)."""
    store, _, version = published
    folder = store / "tiny" / version
    assert folder.stat().st_mode & 0o005 == 0o005
    assert (store / "tiny" / "REFS.json").stat().st_mode & 0o004
    assert all(p.stat().st_mode & 0o004 for p in folder.iterdir())
