"""Import directions, read from the source (ast), not from what happens to be importable.

training -> model_store <- server: training and server never import each other, and both
use model_store only through its public names (`from model_store import X`, X in __all__).
Inside server, the batching loop imports no FastAPI and the model hooks never import FastAPI.
No server module and none of model_store's manifest, spec, preprocessing, store and ONNX modules
imports torch directly (tests/server/test_onnx_runtime.py proves the server runs without it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import model_store

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"training": {"server"}, "server": {"training"}}
NO_FRAMEWORK = {"fastapi", "starlette", "uvicorn"}
MODULE_BANS = {
    "server/batching.py": NO_FRAMEWORK,
    "server/runner.py": NO_FRAMEWORK,
}
TORCH_FREE = [
    *(f"server/{p.name}" for p in sorted((ROOT / "server").glob("*.py"))),
    *(f"model_store/{m}.py" for m in ("__init__", "spec", "preprocess", "filter_map")),
    *(f"model_store/store/{m}.py" for m in ("manifest", "files", "refs", "stored", "versions")),
    *(f"model_store/store/{m}.py" for m in ("errors", "cli")),
    *(f"model_store/runtimes/{m}.py" for m in ("layout", "onnx_runtime", "openvino_runtime")),
]


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import statement in a file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_do_not_import_each_other(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources(package)
        for line, module, _ in imports(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_model_store_is_used_through_its_public_names_only(package: str) -> None:
    public = set(model_store.__all__)
    bad = []
    for path in sources(package):
        for line, module, names in imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module.startswith("model_store."):
                bad.append(f"{where} reaches into {module}")
            elif module == "model_store" and not names:
                bad.append(f"{where}: use `from model_store import <name>`")
            elif module == "model_store":
                bad += [f"{where} imports non-public {n}" for n in names if n not in public]
    assert not bad, bad


@pytest.mark.parametrize("module", sorted(MODULE_BANS))
def test_server_inner_modules_stay_free_of_frameworks(module: str) -> None:
    path = ROOT / module
    found = {m.split(".")[0] for _, m, _ in imports(path)} & MODULE_BANS[module]
    assert not found, f"{module} imports {sorted(found)}"


@pytest.mark.parametrize("module", TORCH_FREE)
def test_the_serving_path_imports_no_torch(module: str) -> None:
    found = [
        m
        for _, m, _ in imports(ROOT / module)
        if m.split(".")[0] == "torch" or m == "safetensors.torch"
    ]
    assert not found, f"{module} imports {found}"
