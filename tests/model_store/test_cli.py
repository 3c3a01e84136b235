"""`python -m model_store`: list, verify, set-current, rollback and gc on a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_store import (
    build_model,
    current_version,
    derive_version,
    list_versions,
    open_version,
    prune_to_union,
    publish_version,
)
from model_store.store.artifact import WEIGHTS
from model_store.store.cli import main
from tests.conftest import randomize, tiny_spec
from tests.model_store.store_tools import leftovers, republish_manifest
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
    assert not leftovers(volume, "tiny")


def test_seed_brings_a_newer_images_measurements_as_a_new_version(
    store: Path, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    """A newer image measured more of v4 (e.g. int8 graphs): that is its v5, derived from v4,
    and the volume gains it as a new version; a version both hold that differs stays a clash."""
    volume = tmp_path_factory.mktemp("volume")
    cli(volume, "seed", "--from", str(store), capsys=capsys)
    derive_version(store, "tiny", "v4", {"graphs/extra.bin": b"measured later"})
    republish_manifest(volume, "tiny", "v3", lambda m: m["training"].update(note="the volume's"))
    code, out, _ = cli(volume, "seed", "--from", str(store), capsys=capsys)
    assert code == 0 and "seeded ['v5']" in out and "kept the store's ['v3']" in out
    assert open_version(volume, "tiny", "v5").read("graphs/extra.bin") == b"measured later"
    assert current_version(volume, "tiny") == "v4"  # the volume's CURRENT never moves
    assert open_version(volume, "tiny", "v3").manifest.training["note"] == "the volume's"


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
    assert not leftovers(volume, "tiny")
    assert (volume / "tiny" / "v1" / WEIGHTS).read_bytes() == before
    refs = json.loads((store / "tiny" / "REFS.json").read_text())
    del refs["versions"]["v3"]  # the image drops its broken v3 (its PREVIOUS)
    refs["previous"] = None
    (store / "tiny" / "REFS.json").write_text(json.dumps(refs))
    code, out, _ = cli(volume, "seed", "--from", str(store), capsys=capsys)
    assert (
        code == 0 and "kept the store's ['v1']" in out and current_version(volume, "tiny") == "v1"
    )
    assert cli(store, "seed", "--from", str(store), capsys=capsys)[0] == 1


def test_list_without_a_name_lists_the_models_and_options_go_anywhere(store: Path, capsys) -> None:
    """`list --store S` (options after the command, no --name) names the models the store
    holds; before, it failed to parse, and without --name said 'S/embedded: no versions'."""
    model = prune_to_union(randomize(build_model(tiny_spec()), 0.5, seed=8))
    publish_version(store, model, _manifest(model, name="other"))
    assert main(["list", "--store", str(store)]) == 0
    assert capsys.readouterr().out.split() == ["other", "tiny"]
    assert main(["list", "--store", str(store), "--name", "tiny"]) == 0
    assert "* v4" in capsys.readouterr().out
    assert main(["verify", "v2", "--store", str(store), "--name", "tiny"]) == 0
    assert main(["list", "--store", str(store), "--name", "none"]) == 0
    assert "no versions (models here: other, tiny)" in capsys.readouterr().out
