"""Our server against the servers a user would pick instead, on the same graph, same client.

Every peer serves the bundled model's fashion graph (the verified file from the store) in ONNX
Runtime with one thread a session and model_store's preprocessing (benchmarks/peer_apps/), as
that project's docs write an app: a plain FastAPI app (1 process and --workers 2), Triton via
PyTriton, LitServe, BentoML and Ray Serve. Each peer lives in its own virtual environment
(peer_envs), made on demand; one that cannot be had is skipped with the reason.

Before any timing each server must answer our top-5 for the test image. Then, in interleaved
rounds (every server once per round, started fresh, so a burst of someone else's load hits one
round of each rather than one server's whole series): cold start to the first correct answer,
`wrk -t1` at each client count, RSS/PSS/USS summed over the server's whole process tree.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from model_store import domain_key, open_version

from .common import ROOT, cpu_seconds, process_memory
from .http_bench import fashion_png
from .peer_envs import DEFAULT_CACHE, PeerUnavailable, libdir, peer_python, versions
from .process import free_port
from .wrk import run_wrk

log = logging.getLogger(__name__)
APPS = Path(__file__).with_name("peer_apps")
OURS = "ours"
OURS_X2 = "ours, --workers 2"  # server/workers.py: an event loop per core
OURS_WORKERS = {OURS: 1, OURS_X2: 2}
START_CAP_S = 300.0  # Ray brings up a cluster first; a busy 2-core box makes it slow
SCORE_TOLERANCE = 1e-5  # same graph, same runtime, same input: only float noise may differ
ORT_PINS = ("onnxruntime==1.32.0", "pillow==13.0.0")  # the project's versions


@dataclass(frozen=True)
class Request:
    """One request as wrk and httpx send it."""

    path: str
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


Top5 = list[tuple[str, float]]


@dataclass(frozen=True)
class Peer:
    """How to install, start, ask and read one server."""

    settings: str  # what the doc says of how it runs
    packages: tuple[str, ...]  # empty: the project's own interpreter has everything it needs
    distributions: tuple[str, ...]  # whose versions the table reports
    command: Callable[[Path, list[int]], list[str]]  # (python, ports) -> argv
    request: Callable[[bytes, str], Request]  # (image, model name) -> the request
    answer: Callable[[Any, list[str]], Top5]  # (response JSON, labels) -> top-5
    ports: int = 1
    triton: bool = False  # needs libpython on LD_LIBRARY_PATH
    version_path: str | None = None  # GET here answers {"version": ...} (the server's own)


def raw(path: str) -> Callable[[bytes, str], Request]:
    """The PNG as the raw body, POSTed to `path` ({model} filled in)."""
    return lambda image, model: Request(path.format(model=model), image, "image/png")


BOUNDARY = "bap-bench-boundary"


def multipart(image: bytes, model: str) -> Request:
    """The PNG as BentoML's `images` file part."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="image.png"'
        "\r\nContent-Type: image/png\r\n\r\n"
    )
    body = head.encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()
    return Request("/classify", body, f"multipart/form-data; boundary={BOUNDARY}")


def v2_binary(image: bytes, model: str) -> Request:
    """An Open Inference Protocol request with the binary tensor extension: the JSON header,
    then the BYTES element (4-byte little-endian length + the PNG)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(image) + 4},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
        }
    ).encode()
    return Request(
        f"/v2/models/{model}/infer",
        header + struct.pack("<I", len(image)) + image,
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(len(header))},
    )


def predictions(body: Any, labels: list[str]) -> Top5:
    return [(p["label"], p["score"]) for p in body["predictions"]]


def first_of_batch(body: Any, labels: list[str]) -> Top5:
    return predictions(body[0], labels)


def v2_top5(body: Any, labels: list[str]) -> Top5:
    probs = np.asarray(body["outputs"][0]["data"], dtype=np.float64)
    best = np.argsort(-probs, kind="stable")[:5]
    return [(labels[i], float(probs[i])) for i in best]


def _uvicorn(workers: int) -> Callable[[Path, list[int]], list[str]]:
    def command(python: Path, ports: list[int]) -> list[str]:
        argv = [str(python), "-m", "uvicorn", "plain_fastapi:app", "--app-dir", str(APPS)]
        argv += ["--host=127.0.0.1", f"--port={ports[0]}", "--log-level=warning"]
        return argv + ["--no-access-log"] + ([f"--workers={workers}"] if workers > 1 else [])

    return command


def _script(name: str) -> Callable[[Path, list[int]], list[str]]:
    return lambda python, ports: [str(python), str(APPS / name), *map(str, ports)]


def _bentoml(python: Path, ports: list[int]) -> list[str]:
    return [str(python), "-m", "bentoml", "serve", "bentoml_service:Fashion", "--working-dir",
            str(APPS), "--host", "127.0.0.1", "--port", str(ports[0])]  # fmt: skip


PLAIN = "FastAPI + ORT, 1 process"
PLAIN_X2 = "FastAPI + ORT, --workers 2"
PEERS: dict[str, Peer] = {
    PLAIN: Peer(
        "sync `def` endpoint (FastAPI's threadpool), raw body as `bytes`, no batching",
        (), ("fastapi", "uvicorn", "onnxruntime"), _uvicorn(1), raw("/classify/{model}"),
        predictions,
    ),
    PLAIN_X2: Peer(
        "the same app in 2 uvicorn worker processes (one session each)",
        (), ("fastapi", "uvicorn", "onnxruntime"), _uvicorn(2), raw("/classify/{model}"),
        predictions,
    ),
    "Triton (PyTriton)": Peer(
        "PyTriton's Triton with its Python backend calling ONNX Runtime (its wheel has no "
        "onnxruntime backend); 2 instances, dynamic batching 16 / 2 ms; KServe v2 binary "
        "BYTES input",
        ("nvidia-pytriton==0.7.0", "numpy<2", *ORT_PINS),
        ("nvidia-pytriton", "onnxruntime", "numpy"), _script("triton_app.py"), v2_binary,
        v2_top5, ports=3, triton=True, version_path="/v2",
    ),
    "LitServe": Peer(
        "LitAPI, batch 16 / 2 ms, 1 CPU worker, raw body via `Annotated[bytes, Body()]`",
        ("litserve==0.2.19", "numpy==2.4.6", *ORT_PINS),
        ("litserve", "fastapi", "onnxruntime"), _script("litserve_app.py"), raw("/classify"),
        predictions,
    ),
    "BentoML": Peer(
        "`@bentoml.api(batchable=True)` adaptive batching up to 16, max latency 1 s, 1 worker; "
        "multipart body (no raw image body)",
        ("bentoml==1.4.40", "numpy==2.4.6", *ORT_PINS),
        ("bentoml", "onnxruntime"), _bentoml, multipart, first_of_batch,
    ),
    "Ray Serve": Peer(
        "`@serve.batch` 16 / 2 ms, 2 replicas, max_ongoing_requests 64, dashboard off",
        ("ray[serve]==2.60.0", "numpy==2.4.6", *ORT_PINS),
        ("ray", "onnxruntime"), _script("ray_app.py"), raw("/classify"), predictions,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    store: Path
    model: str
    domain: str
    peers: tuple[str, ...] = tuple(PEERS)
    clients: tuple[int, ...] = (1, 32)
    rounds: int = 3
    seconds: float = 6.0
    warmup_s: float = 2.0
    install: bool = True  # False: a peer not yet installed is skipped, nothing is downloaded
    cache: Path = DEFAULT_CACHE


@dataclass(frozen=True)
class Launch:
    """A server ready to start: argv, environment, how to ask it."""

    name: str
    argv: Callable[[list[int]], list[str]]
    env: dict[str, str]
    request: Request
    answer: Callable[[Any, list[str]], Top5]
    ports: int
    version_path: str | None = None


class ServerFailed(RuntimeError):
    """The server exited, never answered, or answered unlike ours; the message says which."""


def measure(s: Settings) -> dict[str, Any]:
    image, image_note = fashion_png()
    stored = open_version(s.store, s.model)
    spec = stored.manifest.spec
    pre = spec.domains[spec.domain_names.index(s.domain)]
    labels = list(pre.labels)
    with tempfile.TemporaryDirectory(prefix="bap-peers-") as tmp:
        graph = Path(tmp) / f"{s.domain}.onnx"
        graph.write_bytes(stored.read(domain_key(s.domain)))  # sha256-checked by the store
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BAP_", "BENCH_"))}
        base |= {
            "BENCH_GRAPHS": json.dumps({s.domain: str(graph)}),
            "BENCH_PREPROCESS": json.dumps(asdict(pre.preprocess)),
            "BENCH_LABELS": json.dumps(labels),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
        }
        request = Request(f"/classify?domain={s.domain}", image, "image/png")
        launches = [_ours(name, s, base, request) for name in OURS_WORKERS]
        info = {name: _our_info(OURS_WORKERS[name]) for name in OURS_WORKERS}
        skipped: dict[str, str] = {}
        for name in s.peers:
            try:
                launch, info[name] = prepare(name, s.install, s.cache, base, image, s.domain)
                launches.append(launch)
            except PeerUnavailable as exc:
                log.warning("%s skipped: %s", name, exc)
                skipped[name] = str(exc)
        rounds = _rounds(launches, labels, s, Path(tmp), skipped)
    measured = [n for n in info if n not in skipped]
    return {
        "image": image_note,
        "image_bytes": len(image),
        "graph": f"{s.model} {stored.manifest.version} {domain_key(s.domain)}",
        "servers": {n: info[n] for n in measured},
        "skipped": skipped,
        **rounds,
        "summary": {n: _summary(n, rounds, s.clients) for n in measured},
    }


def _ours(name: str, s: Settings, env: dict[str, str], request: Request) -> Launch:
    def argv(ports: list[int]) -> list[str]:
        return [sys.executable, "-m", "server", f"--store={s.store.resolve()}",
                f"--model={s.model}", f"--port={ports[0]}", "--log-level=warning",
                f"--workers={OURS_WORKERS[name]}"]  # fmt: skip

    return Launch(name, argv, env, request, predictions, 1)


def _our_info(workers: int) -> dict[str, Any]:
    where = (
        "1 process, 2 batches at once"
        if workers == 1
        else f"{workers} worker processes (a socket each), 1 batch at once in each"
    )
    return {
        "settings": "`python -m server` as shipped: raw-body fast path, batching (auto, max 16), "
        f"ONNX Runtime 1 thread a session; {where}",
        "versions": versions(Path(sys.executable), ("onnxruntime", "uvicorn", "fastapi")),
    }


def prepare(
    name: str, install: bool, cache: Path, base: dict[str, str], image: bytes, model: str
) -> tuple[Launch, dict[str, Any]]:
    """Peer `name` ready to start (its environment made if allowed) and what the table says
    of it; raises PeerUnavailable with the reason."""
    peer = PEERS[name]
    python = peer_python(_folder(name), peer.packages, cache, install)
    env = dict(base)
    if peer.triton:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [libdir(python), base.get("LD_LIBRARY_PATH")])
        )
    launch = Launch(
        name, lambda ports: peer.command(python, ports), env, peer.request(image, model),
        peer.answer, peer.ports, peer.version_path,
    )  # fmt: skip
    info = {"settings": peer.settings, "versions": versions(python, peer.distributions)}
    return launch, info


def _folder(name: str) -> str:
    """The cache folder of a peer: its first word, lower case (ray serve -> ray)."""
    return name.split()[0].lower().strip("+,")


def _rounds(
    launches: list[Launch], labels: list[str], s: Settings, logs: Path, skipped: dict[str, str]
) -> dict[str, Any]:
    """Every server once per round, in the same order; a peer that fails (start, answer) is
    skipped from then on with the reason; our server failing stops the suite."""
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    starts: list[dict[str, Any]] = []
    reference: Top5 = []
    server_versions: dict[str, str] = {}
    for round_ in range(s.rounds):
        for launch in launches:
            if launch.name in skipped:
                continue
            try:
                with started(launch, logs) as (pid, url, seconds, body):
                    got = launch.answer(body, labels)
                    reference = reference or got  # ours runs first in every round
                    check_answer(launch.name, got, reference)
                    starts.append({"server": launch.name, "round": round_, "seconds": seconds})
                    if launch.version_path and launch.name not in server_versions:
                        reply = httpx.get(url + launch.version_path, timeout=10).json()
                        server_versions[launch.name] = reply["version"]
                    for clients in s.clients:
                        row = _wrk(url, launch.request, clients, s, pid)
                        rows.append({"server": launch.name, "round": round_} | row)
                        log.info("peers %s", rows[-1])
                    memory.append({"server": launch.name, "round": round_} | tree_memory(pid))
            except ServerFailed as exc:
                if launch.name in OURS_WORKERS:
                    raise
                log.warning("%s skipped: %s", launch.name, exc)
                skipped[launch.name] = str(exc)
    return {
        "rows": rows,
        "memory": memory,
        "cold_start": starts,
        "reference": reference,
        "server_versions": server_versions,
    }


def _wrk(url: str, req: Request, clients: int, s: Settings, pid: int) -> dict[str, Any]:
    """wrk's figures, and the CPU time the server's whole tree spent per answered request
    (what a busy machine disturbs least: waiting for a core is not in it)."""
    target = url + req.path
    if s.warmup_s:
        run_wrk(target, req.body, req.content_type, clients, s.warmup_s, req.headers)
    before = tree_cpu(pid)
    row = run_wrk(target, req.body, req.content_type, clients, s.seconds, req.headers)
    requests = max(1.0, row["req_per_s"] * max(1, round(s.seconds)))
    return row | {"cpu_ms_per_request": (tree_cpu(pid) - before) * 1e3 / requests}


def check_answer(name: str, got: Top5, reference: Top5) -> None:
    """The same five labels in the same order, each score within float noise of ours."""
    same = [g[0] for g in got] == [r[0] for r in reference] and all(
        abs(g[1] - r[1]) <= SCORE_TOLERANCE for g, r in zip(got, reference, strict=True)
    )
    if not same:
        raise ServerFailed(f"{name} answered {got}, ours {reference}: not timed")


@contextmanager
def started(launch: Launch, logs: Path) -> Iterator[tuple[int, str, float, Any]]:
    """Start the server in its own session (so its whole tree can be stopped), wait for its
    first 200 to the benchmark's request; yield (pid, base URL, seconds to it, its JSON)."""
    ports = [free_port() for _ in range(launch.ports)]
    log_path = logs / f"{_folder(launch.name)}-{ports[0]}.log"
    with open(log_path, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            launch.argv(ports), cwd=APPS, env=launch.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{ports[0]}"
    try:
        body = _first_answer(url, launch.request, proc, log_path)
        yield proc.pid, url, time.monotonic() - started, body
    finally:
        _stop(proc)


def _first_answer(url: str, req: Request, proc: subprocess.Popen[bytes], log_path: Path) -> Any:
    headers = {"content-type": req.content_type} | req.headers
    deadline = time.monotonic() + START_CAP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"exited ({proc.returncode}): {_tail(log_path)}")
        try:
            response = httpx.post(url + req.path, content=req.body, headers=headers, timeout=10)
            if response.status_code == 200:
                return response.json()
            if 400 <= response.status_code < 500 and response.status_code != 404:
                raise ServerFailed(f"answered {response.status_code}: {response.text[:300]}")
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise ServerFailed(f"no answer after {START_CAP_S:.0f} s: {_tail(log_path)}")


def _tail(path: Path) -> str:
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-5:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever of it is left."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # children that outlive the leader get the next signal


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc/<n>/stat's parent field)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        out.append(current := todo.pop())
        todo += children.get(current, [])
    return out


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of every process in the tree so far."""
    total = 0.0
    for p in descendants(pid):
        try:
            total += cpu_seconds(p)
        except OSError:  # gone meanwhile
            continue
    return total


def tree_memory(pid: int) -> dict[str, int]:
    """RSS, PSS and USS summed over the whole process tree (RSS counts shared pages once per
    process; PSS splits them, so PSS is what the tree costs the machine)."""
    total = {"rss": 0, "pss": 0, "uss": 0, "processes": 0}
    for p in descendants(pid):
        try:
            one = process_memory(p)
        except (OSError, KeyError):  # gone meanwhile, or a kernel thread without smaps
            continue
        total = {k: total[k] + one[k] for k in one} | {"processes": total["processes"] + 1}
    return total


def _summary(name: str, r: dict[str, Any], clients: tuple[int, ...]) -> dict[str, Any]:
    """Medians over the rounds, with the spread (min-max) of req/s."""
    out: dict[str, Any] = {}
    for c in clients:
        rows = [x for x in r["rows"] if x["server"] == name and x["clients"] == c]
        if rows:
            rate = [x["req_per_s"] for x in rows]
            out[str(c)] = {
                "req_per_s": statistics.median(rate),
                "req_per_s_min": min(rate),
                "req_per_s_max": max(rate),
                "p50_ms": statistics.median(x["p50_ms"] for x in rows),
                "p99_ms": statistics.median(x["p99_ms"] for x in rows),
                "cpu_ms_per_request": statistics.median(x["cpu_ms_per_request"] for x in rows),
                "errors": sum(x["non_2xx"] + x["socket_errors"] for x in rows),
                "rounds": len(rows),
            }
    mem = [m for m in r["memory"] if m["server"] == name]
    if mem:
        for k in ("rss", "pss"):
            out[f"{k}_mib"] = statistics.median(m[k] for m in mem) / 2**20
        out["processes"] = max(m["processes"] for m in mem)
    starts = [x["seconds"] for x in r["cold_start"] if x["server"] == name]
    if starts:
        out["cold_start_s"] = statistics.median(starts)
    return out
