"""`python -m model_store`: list, verify, set-current, rollback and gc on a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_store import (
    add_files,
    build_model,
    current_version,
    list_versions,
    prune_to_union,
    read_manifest,
)
from model_store.artifact import WEIGHTS
from model_store.cli import main
from model_store.versions import publish_version
from tests.conftest import randomize, tiny_spec
from tests.model_store.test_artifact import _manifest


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Four versions of model `tiny`, v4 CURRENT (each publish moved CURRENT)."""
    for seed in range(4):
        model = prune_to_union(randomize(build_model(tiny_spec()), 0.5, seed=seed))
        publish_version(tmp_path, model, _manifest(model))
    return tmp_path


def cli(store: Path, *args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["--store", str(store), "--name", "tiny", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_version_and_which_is_current(store: Path, capsys) -> None:
    code, out, _ = cli(store, "list", "--json", capsys=capsys)
    rows = json.loads(out)
    assert code == 0 and [r["version"] for r in rows] == ["v1", "v2", "v3", "v4"]
    assert [r["current"] for r in rows] == [False, False, False, True]
    assert all(r["budget"] == 0.5 and r["bytes"] > 0 and r["domains"] for r in rows)
    code, out, _ = cli(store, "list", capsys=capsys)
    assert code == 0 and "* v4" in out and "  v1" in out


def test_verify_names_a_corrupt_version(store: Path, capsys) -> None:
    assert cli(store, "verify", capsys=capsys)[0] == 0  # CURRENT
    weights = store / "tiny" / "v2" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, _, err = cli(store, "verify", "v2", capsys=capsys)
    assert code == 1 and "SHA-256 does not match" in err


def test_set_current_refuses_a_bad_version_and_rollback_returns(store: Path, capsys) -> None:
    (store / "tiny" / "v1" / WEIGHTS).write_bytes(b"broken")
    code, _, err = cli(store, "set-current", "v1", capsys=capsys)
    assert code == 1 and "v1" in err and current_version(store, "tiny") == "v4"
    code, _, err = cli(store, "set-current", "v9", capsys=capsys)
    assert code == 1 and "no such version" in err
    assert cli(store, "set-current", "v2", capsys=capsys)[0] == 0
    assert current_version(store, "tiny") == "v2"
    code, out, _ = cli(store, "rollback", capsys=capsys)
    assert code == 0 and current_version(store, "tiny") == "v4" and "was v2" in out
    cli(store, "rollback", capsys=capsys)  # and back again: PREVIOUS is the one left
    assert current_version(store, "tiny") == "v2"


def test_gc_keeps_the_newest_and_never_current_or_previous(store: Path, capsys) -> None:
    cli(store, "set-current", "v2", capsys=capsys)  # CURRENT v2, PREVIOUS v4
    code, out, _ = cli(store, "gc", "--keep", "1", capsys=capsys)
    assert code == 0 and list_versions(store, "tiny") == ["v2", "v4"]
    assert cli(store, "gc", "--keep", "0", capsys=capsys)[0] == 1


def test_the_store_defaults_to_the_servers_settings(store: Path) -> None:
    env = {"BAP_STORE": str(store), "BAP_MODEL": "tiny", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "model_store", "list"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and "* v4" in out.stdout


def test_seed_copies_only_missing_versions_and_never_moves_current(
    store: Path, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    """An image's store seeds a volume: all of it into an empty one, later only what is new."""
    volume = tmp_path_factory.mktemp("volume")
    code, out, _ = cli(volume, "seed", "--from", str(store), capsys=capsys)
    assert code == 0 and list_versions(volume, "tiny") == ["v1", "v2", "v3", "v4"]
    assert current_version(volume, "tiny") == "v4" and "seeded ['v1', 'v2', 'v3', 'v4']" in out
    assert cli(volume, "verify", "v1", capsys=capsys)[0] == 0
    cli(volume, "set-current", "v2", capsys=capsys)  # the operator's choice
    model = prune_to_union(randomize(build_model(tiny_spec()), 0.5, seed=9))
    publish_version(store, model, _manifest(model))  # a newer image brings v5
    code, out, _ = cli(volume, "seed", "--from", str(store), capsys=capsys)
    assert code == 0 and "seeded ['v5']" in out and current_version(volume, "tiny") == "v2"
    assert not [p for p in (volume / "tiny").iterdir() if p.name.startswith(".")]


def test_seed_adds_a_newer_images_files_and_measurements_to_a_version_it_holds(
    store: Path, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    """A newer image measured more of the same version (int8 graphs, bf16 accuracy): the
    volume's copy gains exactly that; a version the volume changed itself stays a clash."""
    volume = tmp_path_factory.mktemp("volume")
    cli(volume, "seed", "--from", str(store), capsys=capsys)
    image_v2 = store / "tiny" / "v2"
    offer = read_manifest(image_v2)
    offer.training["bf16"] = {"domains": {"d": {"accuracy_bf16": 0.5}}}
    add_files(image_v2, offer, {"graphs/extra.bin": b"measured later"})
    mine = read_manifest(volume / "tiny" / "v3")  # the operator measured something on v3
    mine.training["note"] = "the volume's own"
    add_files(volume / "tiny" / "v3", mine, {})
    store_v3 = read_manifest(store / "tiny" / "v3")
    store_v3.training["note"] = "the image's"
    add_files(store / "tiny" / "v3", store_v3, {})
    code, out, _ = cli(volume, "seed", "--from", str(store), capsys=capsys)
    assert code == 0 and "new files and measurements to ['v2']" in out
    assert "kept the store's ['v3']" in out
    assert read_manifest(volume / "tiny" / "v2").to_json() == read_manifest(image_v2).to_json()
    assert (volume / "tiny" / "v2" / "graphs" / "extra.bin").read_bytes() == b"measured later"
    assert cli(volume, "verify", "v2", capsys=capsys)[0] == 0
    assert read_manifest(volume / "tiny" / "v3").training["note"] == "the volume's own"
    code, out, _ = cli(volume, "seed", "--from", str(store), capsys=capsys)
    assert code == 0 and "seeded nothing" in out and "new files" not in out  # nothing more


def test_seed_reports_a_clash_and_refuses_a_corrupt_source(
    store: Path, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    volume = tmp_path_factory.mktemp("volume")
    model = prune_to_union(randomize(build_model(tiny_spec()), 0.5, seed=7))
    publish_version(volume, model, _manifest(model))  # the volume's own v1, not the image's
    before = (volume / "tiny" / "v1" / WEIGHTS).read_bytes()
    (store / "tiny" / "v3" / WEIGHTS).write_bytes(b"broken")
    code, _, err = cli(volume, "seed", "--from", str(store), capsys=capsys)
    assert code == 1 and "v3" in err
    assert list_versions(volume, "tiny") == ["v1", "v2"]  # copied in order; v3 never appeared
    assert not [p for p in (volume / "tiny").iterdir() if p.name.startswith(".")]
    assert (volume / "tiny" / "v1" / WEIGHTS).read_bytes() == before
    (store / "tiny" / "v3").rename(store / "tiny" / "v3-broken")
    code, out, _ = cli(volume, "seed", "--from", str(store), capsys=capsys)
    assert (
        code == 0 and "kept the store's ['v1']" in out and current_version(volume, "tiny") == "v1"
    )
    assert cli(store, "seed", "--from", str(store), capsys=capsys)[0] == 1
