"""`python -m model_store`: look after a store without `python -c` one-liners.

    list                 the store's models; with --name, versions, CURRENT, budget, domains
    verify [VERSION]     SHA-256 of every file, then load the weights (default CURRENT)
    set-current VERSION  verify, then point CURRENT at it (the old one becomes PREVIOUS)
    rollback             point CURRENT back at PREVIOUS
    gc --keep N          delete all but the newest N versions, never CURRENT or PREVIOUS
    seed --from STORE    copy in the versions this store lacks (CURRENT only if it has none)
    export-graphs [V]    a new version of V with graphs from this code
    upgrade              move a store of the older layout (CURRENT files) to REFS.json

Every command that changes the store holds the model's lock; see versions.py for what the store
guarantees.
The store and model default to the server's own settings, BAP_STORE and BAP_MODEL, so the same
command works in the container. Exit status 1 and one line on stderr for anything refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ArtifactError, one_line
from .refs import locked, read_manifest_bytes, read_refs
from .stored import StoredVersion, list_models, list_versions, open_version
from .versions import (
    collect_garbage,
    recompile_version,
    rollback,
    seed_versions,
    set_current,
)

DEFAULT_MODEL = "embedded"


def version_rows(store: Path, name: str) -> list[dict[str, Any]]:
    """One row per published version, oldest first; a version that cannot be read says why
    (and never hides the others)."""
    root = store / name
    refs = read_refs(root)
    rows = []
    for version in refs.versions:
        row: dict[str, Any] = {"version": version, "current": version == refs.current}
        try:
            manifest, _ = read_manifest_bytes(root, version, refs)
            row["bytes"] = sum(f["bytes"] for f in manifest.files.values())
        except ArtifactError as exc:
            rows.append({**row, "error": str(exc)})
            continue
        row["budget"] = manifest.budget
        row["domains"] = sorted(manifest.domains)
        row["created_at"] = manifest.provenance.get("created_at")
        rows.append(row)
    return rows


def cmd_list(store: Path, name: str | None, args: argparse.Namespace) -> str:
    if name is None:  # the models the store holds
        models = list_models(store)
        if args.json:
            return json.dumps(models)
        return "\n".join(models) if models else f"{store}: holds no models"
    if not list_versions(store, name):
        return (
            f"{store / name}: no versions (models here: {', '.join(list_models(store)) or 'none'})"
        )
    rows = version_rows(store, name)
    if args.json:
        return json.dumps(rows, indent=2)
    lines = [f"{'':2}{'version':8}{'budget':>7}{'MB':>7}  {'created':26}domains"]
    for r in rows:
        mark = "* " if r["current"] else "  "
        if "error" in r:
            lines.append(f"{mark}{r['version']:8}  unreadable: {r['error']}")
            continue
        created = r["created_at"] or "-"
        size = f"{r['bytes'] / 1e6:7.2f}"
        lines.append(
            f"{mark}{r['version']:8}{r['budget']:7.2f}{size}  {created:26}{', '.join(r['domains'])}"
        )
    return "\n".join([*lines, "(* = CURRENT)"])


def deep_check(stored: StoredVersion) -> str:
    """The strongest check this install can make beyond the SHA-256s, and what it was: a strict
    weight load with torch, or (the torch-free server install) every compiled graph loaded in
    ONNX Runtime, as the server would load them."""
    try:
        from .artifact import load_model
    except ImportError:
        from ..runtimes.onnx_runtime import OnnxGraphs

        OnnxGraphs(stored, threads=1)  # refuses a version without graphs, says why
        return "graphs load in ONNX Runtime (no torch here)"
    load_model(stored)
    return "weights load"


def cmd_verify(store: Path, name: str, args: argparse.Namespace) -> str:
    stored = open_version(store, name, args.version)
    stored.verify()
    what = deep_check(stored)
    return f"{stored.folder}: ok ({len(stored.manifest.files)} files, SHA-256 match, {what})"


def cmd_set_current(store: Path, name: str, args: argparse.Namespace) -> str:
    set_current(store, name, args.version, check=deep_check)  # never CURRENT on a bad one
    return f"{name}: CURRENT = {args.version} (reload the server: POST /admin/reload or SIGHUP)"


def cmd_rollback(store: Path, name: str, args: argparse.Namespace) -> str:
    now, left = rollback(store, name, check=deep_check)
    return f"{name}: CURRENT = {now} (was {left}; reload the server to serve it)"


def cmd_gc(store: Path, name: str, args: argparse.Namespace) -> str:
    removed, kept = collect_garbage(store, name, args.keep)
    return f"{name}: removed {removed or 'nothing'}; kept {kept}"


def cmd_seed(store: Path, name: str, args: argparse.Namespace) -> str:
    if args.source.resolve() == store.resolve():
        raise ArtifactError(f"--from {args.source} is the store itself")
    if not list_versions(args.source, name):
        raise ArtifactError(f"{args.source / name}: no versions to seed from")
    added, clashes = seed_versions(args.source, store, name)
    notes = ""
    if clashes:
        notes = f"; kept the store's {clashes}, which differ from {args.source}'s versions"
    current = read_refs(store / name).current
    return f"{name}: seeded {added or 'nothing'} from {args.source}; CURRENT = {current}{notes}"


def cmd_upgrade(store: Path, name: str, args: argparse.Namespace) -> str:
    with locked(store, name) as root:  # taking the lock upgrades the layout
        refs = read_refs(root)
    return f"{name}: {len(refs.versions)} versions recorded in {root / 'REFS.json'}"


def cmd_export_graphs(store: Path, name: str, args: argparse.Namespace) -> str:
    publication, manifest = recompile_version(store, name, args.version)
    source = manifest.provenance["derived_from"]
    graphs = sorted(k for k in manifest.files if k.endswith(".onnx"))
    size = sum(manifest.files[k]["bytes"] for k in graphs)
    where = (
        f"CURRENT = {publication.current}"
        if publication.current == publication.version
        else f"not CURRENT; `set-current {publication.version}` to serve it"
    )
    return (
        f"{name}: {publication.version} published from {source} with {len(graphs)} graphs "
        f"({size / 1e6:.2f} MB) exported by this code ({where})"
    )


COMMANDS = {
    "list": cmd_list,
    "verify": cmd_verify,
    "set-current": cmd_set_current,
    "rollback": cmd_rollback,
    "gc": cmd_gc,
    "export-graphs": cmd_export_graphs,
    "seed": cmd_seed,
    "upgrade": cmd_upgrade,
}


def _common(p: argparse.ArgumentParser, default: Any) -> None:
    """--store and --name, accepted before or after the command (`default` SUPPRESS on the
    commands, so a value given before one is kept)."""
    p.add_argument("--store", type=Path, default=default, help="store folder (default: $BAP_STORE)")
    p.add_argument(
        "--name",
        default=default,
        help=f"model name (default: $BAP_MODEL, else {DEFAULT_MODEL}; `list` without it lists "
        "the store's models)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_store", description=__doc__.split("\n")[0])
    _common(p, None)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        made = sub.add_parser(name, help=help)
        _common(made, argparse.SUPPRESS)
        return made

    command("list", "the store's models, or a model's versions").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )
    command("verify", "check a version's files and weights").add_argument(
        "version", nargs="?", help="default: CURRENT"
    )
    command("set-current", "verify a version, then make it CURRENT").add_argument("version")
    command("rollback", "make PREVIOUS CURRENT again")
    command("gc", "delete old versions").add_argument(
        "--keep", type=int, required=True, help="newest versions to keep"
    )
    command("seed", "copy in the versions this store lacks from another store (an image's)")
    sub.choices["seed"].add_argument(
        "--from", dest="source", type=Path, required=True, help="store to copy from"
    )
    command("upgrade", "record a store of the older layout (CURRENT files) in REFS.json")
    command(
        "export-graphs",
        "publish a version derived from another (default CURRENT) with ONNX graphs exported "
        "by this code (CURRENT moves to it if it named the source)",
    ).add_argument("version", nargs="?", help="default: CURRENT")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    store = args.store or (Path(os.environ["BAP_STORE"]) if os.environ.get("BAP_STORE") else None)
    name = args.name or os.environ.get("BAP_MODEL")
    if name is None and args.command != "list":
        name = DEFAULT_MODEL
    try:
        if store is None:
            raise ArtifactError("give --store (or set BAP_STORE)")
        sys.stdout.write(COMMANDS[args.command](store, name, args) + "\n")
    except (ArtifactError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {args.command}: {one_line(exc)}\n")
        return 1
    return 0
