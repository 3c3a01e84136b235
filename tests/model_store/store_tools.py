"""Helpers for store tests: a manifest published as written (its digest recorded, as a buggy or
hostile writer would) and the invariants every store command must leave behind."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_store import open_version, version_path
from model_store.store.refs import REFS


def republish_manifest(
    store: Path, name: str, version: str, edit: Callable[[dict[str, Any]], Any]
) -> None:
    """Rewrite a version's manifest through `edit` and record its new digest in REFS.json, so
    what is tested is the manifest's content, not the digest check."""
    path = version_path(store, name, version) / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    raw = json.dumps(data).encode()
    path.write_bytes(raw)
    record_digest(store, name, version, raw)


def record_digest(store: Path, name: str, version: str, raw: bytes) -> None:
    refs_path = Path(store) / name / REFS
    refs = json.loads(refs_path.read_text())
    refs["versions"][version] = hashlib.sha256(raw).hexdigest()
    refs_path.write_text(json.dumps(refs))


def assert_store_sound(store: Path, name: str) -> None:
    """CURRENT verified; PREVIOUS (when set) a verified other version. A store that never had a
    CURRENT (a first seed cut short) may have none, and then no PREVIOUS either."""
    refs = json.loads((Path(store) / name / REFS).read_text())
    if refs["current"] is None:
        assert refs["previous"] is None
        return
    assert refs["current"] in refs["versions"]
    open_version(store, name).verify()
    if refs["previous"] is not None:
        assert refs["previous"] != refs["current"]
        open_version(store, name, refs["previous"]).verify()


def leftovers(store: Path, name: str) -> list[str]:
    """Hidden entries other than the lock file: what a killed command left behind."""
    return sorted(
        p.name
        for p in (Path(store) / name).iterdir()
        if p.name.startswith(".") and p.name != ".lock"
    )
