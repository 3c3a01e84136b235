"""`python -m model_store`: look after a store without `python -c` one-liners.

    list                 versions, CURRENT, budget, domains, size
    verify [VERSION]     SHA-256 of every file, then load the weights (default CURRENT)
    set-current VERSION  verify, then point CURRENT at it (the old one becomes PREVIOUS)
    rollback             point CURRENT back at PREVIOUS
    gc --keep N          delete all but the newest N versions, never CURRENT or PREVIOUS
    seed --from STORE    copy in the versions this store lacks (CURRENT only if it has none)

The store and model default to the server's own settings, BAP_STORE and BAP_MODEL, so the same
command works in the container. Exit status 1 and one line on stderr for anything refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .manifest import ArtifactError, read_manifest, verify_files
from .versions import (
    current_version,
    list_versions,
    previous_version,
    seed_versions,
    set_current,
    version_path,
)

DEFAULT_MODEL = "embedded"


def _pointer(store: Path, name: str, read) -> str | None:
    try:
        return read(store, name)
    except ArtifactError:
        return None


def version_rows(store: Path, name: str) -> list[dict[str, Any]]:
    """One row per version, oldest first; a version whose manifest is unreadable says so."""
    current = _pointer(store, name, current_version)
    rows = []
    for version in list_versions(store, name):
        folder = store / name / version
        row: dict[str, Any] = {"version": version, "current": version == current}
        row["bytes"] = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        try:
            manifest = read_manifest(folder)
        except ArtifactError as exc:
            rows.append({**row, "error": str(exc)})
            continue
        row["budget"] = manifest.budget
        row["domains"] = sorted(manifest.domains)
        row["created_at"] = manifest.provenance.get("created_at")
        rows.append(row)
    return rows


def cmd_list(store: Path, name: str, args: argparse.Namespace) -> str:
    rows = version_rows(store, name)
    if args.json:
        return json.dumps(rows, indent=2)
    if not rows:
        return f"{store / name}: no versions"
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


def verify(folder: Path) -> str:
    """The strongest check this install can make, and what it was: every file's SHA-256, then
    a strict weight load with torch, or (the torch-free server install) every compiled graph
    loaded in ONNX Runtime, as the server would load them."""
    try:
        from .artifact import read_artifact
    except ImportError:
        manifest = read_manifest(folder)
        verify_files(folder, manifest)
        from .onnx_runtime import OnnxGraphs

        OnnxGraphs(folder, manifest, threads=1)  # refuses a version without graphs, says why
        what = "graphs load in ONNX Runtime (no torch here)"
    else:
        manifest, _ = read_artifact(folder)
        what = "weights load"
    return f"{len(manifest.files)} files, SHA-256 match, {what}"


def cmd_verify(store: Path, name: str, args: argparse.Namespace) -> str:
    folder = version_path(store, name, args.version)
    return f"{folder}: ok ({verify(folder)})"


def cmd_set_current(store: Path, name: str, args: argparse.Namespace) -> str:
    verify(version_path(store, name, args.version))  # never point CURRENT at a bad one
    set_current(store, name, args.version)
    return f"{name}: CURRENT = {args.version} (reload the server: POST /admin/reload or SIGHUP)"


def cmd_rollback(store: Path, name: str, args: argparse.Namespace) -> str:
    target = previous_version(store, name)
    verify(version_path(store, name, target))
    left = current_version(store, name)
    set_current(store, name, target)
    return f"{name}: CURRENT = {target} (was {left}; reload the server to serve it)"


def cmd_gc(store: Path, name: str, args: argparse.Namespace) -> str:
    if args.keep < 1:
        raise ArtifactError(f"--keep must be >= 1, got {args.keep}")
    versions = list_versions(store, name)
    protected = {_pointer(store, name, current_version), _pointer(store, name, previous_version)}
    doomed = [v for v in versions[: -args.keep] if v not in protected]
    for version in doomed:
        shutil.rmtree(store / name / version)
    kept = [v for v in versions if v not in doomed]
    return f"{name}: removed {doomed or 'nothing'}; kept {kept}"


def cmd_seed(store: Path, name: str, args: argparse.Namespace) -> str:
    if args.source.resolve() == store.resolve():
        raise ArtifactError(f"--from {args.source} is the store itself")
    if not list_versions(args.source, name):
        raise ArtifactError(f"{args.source / name}: no versions to seed from")
    added, extended, clashes = seed_versions(args.source, store, name)
    notes = ""
    if extended:
        notes += f"; added {args.source}'s new files and measurements to {extended}"
    if clashes:
        notes += f"; kept the store's {clashes}, which differ from {args.source}'s versions"
    current = current_version(store, name)
    return f"{name}: seeded {added or 'nothing'} from {args.source}; CURRENT = {current}{notes}"


def cmd_export_graphs(store: Path, name: str, args: argparse.Namespace) -> str:
    from .graphs import add_graphs, recompile_version  # the ONNX exporter, only for this command

    if args.as_new_version:
        source = version_path(store, name, args.version).name
        manifest = recompile_version(store, name, args.version)
        return (
            f"{name}: {manifest.version} published from {source} with graphs exported by this "
            f"code (not CURRENT; `set-current {manifest.version}` to serve it)"
        )
    folder = version_path(store, name, args.version)
    manifest = add_graphs(folder)
    graphs = sorted(k for k in manifest.files if k.endswith(".onnx"))
    size = sum(manifest.files[k]["bytes"] for k in graphs)
    return f"{folder}: {len(graphs)} graphs ({size / 1e6:.2f} MB) added to the manifest"


COMMANDS = {
    "list": cmd_list,
    "verify": cmd_verify,
    "set-current": cmd_set_current,
    "rollback": cmd_rollback,
    "gc": cmd_gc,
    "export-graphs": cmd_export_graphs,
    "seed": cmd_seed,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_store", description=__doc__.split("\n")[0])
    store = os.environ.get("BAP_STORE")
    p.add_argument(
        "--store",
        type=Path,
        default=Path(store) if store else None,
        required=store is None,
        help="store folder (default: $BAP_STORE)",
    )
    p.add_argument(
        "--name",
        default=os.environ.get("BAP_MODEL", DEFAULT_MODEL),
        help=f"model name (default: $BAP_MODEL, else {DEFAULT_MODEL})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="versions, CURRENT, budget, domains, size").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )
    sub.add_parser("verify", help="check a version's files and weights").add_argument(
        "version", nargs="?", help="default: CURRENT"
    )
    sub.add_parser("set-current", help="verify a version, then make it CURRENT").add_argument(
        "version"
    )
    sub.add_parser("rollback", help="make PREVIOUS CURRENT again")
    sub.add_parser("gc", help="delete old versions").add_argument(
        "--keep", type=int, required=True, help="newest versions to keep"
    )
    sub.add_parser(
        "seed", help="copy in the versions this store lacks from another store (an image's)"
    ).add_argument("--from", dest="source", type=Path, required=True, help="store to copy from")
    export = sub.add_parser(
        "export-graphs", help="add ONNX graphs (every domain, mixed) to a version"
    )
    export.add_argument("version", nargs="?", help="default: CURRENT")
    export.add_argument(
        "--as-new-version",
        action="store_true",
        help="publish a copy of the version with freshly exported graphs instead (for a version "
        "that has graphs already, made by an older exporter)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sys.stdout.write(COMMANDS[args.command](args.store, args.name, args) + "\n")
    except (ArtifactError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0
