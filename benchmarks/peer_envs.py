"""Each peer server's own virtual environment, made on demand in a cache folder outside the repo.

A peer's packages (and their pins: PyTriton needs numpy < 2) must never reach the project's
.venv, and a peer that cannot be installed here must not stop the suite: it is skipped with the
reason. A folder counts as installed only when its stamp lists exactly the requirements asked
for, so a changed pin reinstalls it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DEFAULT_CACHE = Path.home() / ".cache" / "bap-bench" / "peers"
INSTALL_CAP_S = 1800.0  # Ray's wheels alone are ~70 MB
STAMP = "installed.txt"


class PeerUnavailable(RuntimeError):
    """The peer cannot run here; the message is the reason the results table shows."""


def peer_python(name: str, packages: tuple[str, ...], cache: Path, install: bool) -> Path:
    """The interpreter that runs peer `name`: the project's own when it needs no package beyond
    the project's, else `<cache>/<name>/venv`'s, installed first when `install` is allowed."""
    if not packages:
        return Path(sys.executable)
    folder = cache / name
    python, stamp = folder / "venv" / "bin" / "python", folder / STAMP
    wanted = "\n".join(packages) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if not install:
        raise PeerUnavailable(f"not installed in {folder} (run the suite without --no-install)")
    _install(folder, packages)
    stamp.write_text(wanted)
    return python


def _install(folder: Path, packages: tuple[str, ...]) -> None:
    """A fresh venv from the interpreter the project's venv was made from, then pip install."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STAMP).unlink(missing_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    log = folder / "install.log"
    steps = [
        [base, "-m", "venv", "--clear", str(folder / "venv")],
        [str(folder / "venv" / "bin" / "python"), "-m", "pip", "install", *packages],
    ]
    with open(log, "w") as out:
        for step in steps:
            try:
                subprocess.run(
                    step, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=INSTALL_CAP_S
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                tail = " | ".join(log.read_text().strip().splitlines()[-3:])
                raise PeerUnavailable(f"`{' '.join(step[-3:])}` failed ({exc}): {tail}") from exc


def versions(python: Path, distributions: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each distribution in that interpreter ("missing" if absent)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(d):\n"
        "    try:\n"
        "        return m.version(d)\n"
        "    except m.PackageNotFoundError:\n"
        "        return 'missing'\n"
        "print(json.dumps({d: v(d) for d in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [str(python), "-c", code, *distributions], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def libdir(python: Path) -> str:
    """The folder of that interpreter's libpython (PyTriton's Python backend stub loads it)."""
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
