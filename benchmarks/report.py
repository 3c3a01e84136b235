"""docs/benchmarks.md from whatever results/*.json exist, plus two hand-written parts:
findings.md (what the figures mean, after the targets) and method.md (how they are made, last).

Tables only restate the JSON; the targets table computes each target from it, so the
doc and the figures cannot drift apart. Every table names the run (machine, load, commit).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .peers_bench import OURS_WORKERS
from .server_bench import SWEEPS

FINDINGS = Path(__file__).with_name("findings.md")
METHOD = Path(__file__).with_name("method.md")
Row = dict[str, Any]


def load(results: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def run_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"_Run {m['utc']} UTC, commit {m['commit']}: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, torch {m['torch']} ({m['torch_threads']} threads), "
        f"load average {m['load_average'][0]} at the start, {m['load_average_end'][0]} at the "
        f"end; settings {json.dumps(result['settings'])}._"
    )


def _budget(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def model_rows(rows: list[Row]) -> list[list[object]]:
    """Own-filter views are one row per domain in the JSON; here their median, with the range."""
    groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["batch"], r["network"], r["strategy"], r["budget"])].append(r)
    out = []
    for (batch, network, strategy, budget), rs in groups.items():
        speed = [r["speedup"] for r in rs]
        spread = f" ({min(speed):.2f}–{max(speed):.2f})" if len(rs) > 1 else ""
        out.append(
            [
                batch,
                network,
                strategy,
                _budget(budget),
                statistics.median(r["ms"] for r in rs),
                statistics.median(r["images_per_s"] for r in rs),
                statistics.median(r["gmacs_per_image"] for r in rs),
                statistics.median(r["macs_ratio"] for r in rs),
                f"{statistics.median(speed):.2f}{spread}",
                statistics.median(r["cpu_speedup"] for r in rs),
                statistics.median(r["peak_mib"] for r in rs),
            ]
        )
    return out


def model_section(result: dict[str, Any]) -> str:
    header = [
        "batch",
        "network",
        "run as",
        "β",
        "ms / batch",
        "img/s",
        "GMACs / img",
        "MACs ratio",
        "speedup",
        "CPU-time speedup",
        "peak MiB",
    ]
    parts = ["## Model level: pruned vs unpruned, one process", run_line(result)]
    by_shape: dict[str, list[Row]] = defaultdict(list)
    for r in result["figures"]["rows"]:
        by_shape[r["shape"]].append(r)
    for shape, rows in by_shape.items():
        parts += [f"### {shape}", table(header, model_rows(rows))]
    return "\n\n".join(parts)


def _by(points: list[Row], server: str, traffic: str) -> dict[int, Row]:
    return {p["clients"]: p for p in points if p["server"] == server and p["traffic"] == traffic}


def server_section(result: dict[str, Any]) -> str:
    points = result["figures"]["points"]
    sweep = [
        [
            p["server"],
            p["clients"],
            p["throughput"],
            p["p50_ms"],
            p["p95_ms"],
            p["p99_ms"],
            _errors(p),
            p["mean_batch"],
            p.get("http_over_inprocess"),
            p.get("http_over_model"),
            p["server_cpu_ms_per_request"],
            p.get("inprocess_cpu_ms_per_image"),
            p.get("cpu_inprocess_over_server"),
            p["client_cpu_ms_per_request"],
        ]
        for name in SWEEPS
        for p in _by(points, name, "spread").values()
    ]
    header = [
        "server",
        "clients",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "batch formed",
        "HTTP / in-process",
        "HTTP / model only",
        "server CPU ms / req",
        "in-process CPU ms / img",
        "CPU in-process / server",
        "client CPU ms / req",
    ]
    policy_rows = []
    for traffic in ("spread", "one domain"):
        per = [_by(points, s, traffic) for s in ("per-domain", "mixed", "auto")]
        for c in sorted(set.intersection(*(set(p) for p in per))):
            pd, mx, au = (p[c] for p in per)
            best = max(pd["throughput"], mx["throughput"])
            policy_rows.append(
                [traffic, c]
                + [v for p in (pd, mx, au) for v in (p["throughput"], p["p99_ms"], p["mean_batch"])]
                + [mx["throughput"] / pd["throughput"], au["throughput"] / best]
            )
    policy_header = [
        "traffic",
        "clients",
        "per-domain req/s",
        "p99",
        "batch",
        "mixed req/s",
        "p99",
        "batch",
        "auto req/s",
        "p99",
        "batch",
        "mixed / per-domain",
        "auto / best",
    ]
    half = [p for p in points if p["traffic"] == "spread, half max rate"]
    half_rows = [
        [p["rate"], p["throughput"], p["p50_ms"], p["p99_ms"], p["p99_ms"] / p["p50_ms"]]
        for p in half
        if p["p50_ms"]
    ]
    model = result["figures"]["model"]
    return "\n\n".join(
        [
            "## Server level: HTTP on loopback",
            run_line(result),
            f"Model: BAP β = {model['budget']}, 4 domains, {model['shape']}. Client: async httpx, "
            "multipart PNG, on the same cores as the server. Latencies in ms. Traffic spread "
            "evenly over the 4 domains unless said.",
            "### Batching off (max batch size 1) vs on (auto, max batch 16 / 5 ms)",
            "HTTP / in-process divides by the same work without HTTP (decode + forward on the "
            "path the server took, at the batch size it formed); HTTP / model only divides by "
            "the forward alone. CPU per request is the whole run's (warm-up included); CPU "
            "in-process / server is the same overhead ratio in CPU time, which other processes "
            "on the machine barely disturb.",
            table(header, sweep),
            "### Batching policy: per-domain vs mixed vs auto",
            table(policy_header, policy_rows),
            "### Open loop at half the maximum throughput (auto)",
            table(["rate req/s", "served req/s", "p50 ms", "p99 ms", "p99 / p50"], half_rows),
        ]
    )


def _errors(*points: Row) -> int:
    return sum(sum(p["errors"].values()) for p in points)


def memory_section(result: dict[str, Any]) -> str:
    f = result["figures"]
    n = f["domains"]
    rows = [["one server, all domains", *f["one_server"].values()]]
    rows += [[f"single-domain server {d}", *m.values()] for d, m in f["single_servers"].items()]
    rows += [[f"sum of {n} single-domain servers", *f["single_servers_total"].values()]]
    rows += [["one / sum", *(f"{v:.2f}" for v in f["one_over_sum"].values())]]
    return "\n\n".join(
        [
            "## Memory: one server for all domains vs one server per domain",
            run_line(result),
            table(["", "RSS MiB", "PSS MiB", "USS MiB"], rows),
            "Weights files (MiB): " + ", ".join(f"{k} {v}" for k, v in f["weights_mib"].items()),
        ]
    )


def resnet50_section(result: dict[str, Any]) -> str:
    f = result["figures"]
    speed = [
        [
            g["domain"], g["batch"], f"{g['unpruned_ms']:.1f}", f"{g['view_ms']:.1f}",
            f"{g['union_ms']:.1f}", f"{g['view_speedup']:.2f}x / {g['view_macs_ratio']:.2f}x",
            f"{g['union_speedup']:.2f}x / {g['union_macs_ratio']:.2f}x",
        ]
        for g in f["graph_speed"]
    ]  # fmt: skip
    o, s = f["ours"], f["singles"]
    servers = [
        ["one pruned server, every domain", f"{o['throughput']:.1f}", f"{o['p99_ms']:.0f}",
         *f["ours_memory_mib"].values(), sum(o["errors"].values())],
        [f"{len(f['domain_cost_fractions'])} unpruned single-domain servers",
         f"{s['throughput']:.1f}", f"{s['p99_ms']:.0f}", *f["singles_memory_mib"].values(),
         sum(s["errors"].values())],
    ]  # fmt: skip
    return "\n\n".join(
        [
            "## ResNet-50 at 224 px: where pruning pays",
            run_line(result),
            f"Domain cost fractions (MACs): {f['domain_cost_fractions']}; views loaded by "
            f"the server's default `domain_graphs`: {f['views_loaded'] or 'none (the union)'}.",
            table(
                [
                    "domain",
                    "batch",
                    "unpruned ms",
                    "own view ms",
                    "union ms",
                    "view speed-up / MACs ratio",
                    "union speed-up / MACs ratio",
                ],
                speed,
            ),  # fmt: skip
            table(["", "req/s", "p99 ms", "RSS MiB", "PSS MiB", "USS MiB", "errors"], servers),
            f"Load rounds in turn, req/s: ours {o.get('rounds')}, the single-domain servers "
            f"{s.get('rounds')} (the median round is in the table). "
            f"One server / the single-domain servers: RSS {f['rss_ratio']:.2f}, PSS "
            f"{f['pss_ratio']:.2f}, req/s {f['throughput_ratio']:.2f}. In-process ceiling "
            "(decode + forward of one-domain batches of 16 on 1-thread sessions, one per core at "
            "once, as the server runs them; a round after each pair of load rounds, median): "
            f"{f['ceiling']['images_per_s']:.1f} img/s; "
            f"the server reaches {f['server_over_ceiling']:.2f} of it.",
        ]
    )


def _peer_ratios(f: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per configuration of ours (1 process; --workers 2 where the run has it) and per peer:
    ours ÷ it, req/s at the fewest and the most clients and p99 at the most, from the medians
    over the interleaved rounds."""
    summary = f["summary"]
    ours_names = [n for n in OURS_WORKERS if n in summary]
    clients = sorted(int(c) for c in summary["ours"] if c.isdigit())
    lo, hi = str(clients[0]), str(clients[-1])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mine in ours_names:
        ours = summary[mine]
        out[mine] = {
            name: {
                "lo": ours[lo]["req_per_s"] / peer[lo]["req_per_s"],
                "hi": ours[hi]["req_per_s"] / peer[hi]["req_per_s"],
                "p99_hi": ours[hi]["p99_ms"] / peer[hi]["p99_ms"],
            }
            for name, peer in summary.items()
            if name not in ours_names and lo in peer and hi in peer
        }
    return out


def peers_section(result: dict[str, Any]) -> str:
    f = result["figures"]
    ratios = _peer_ratios(f)
    clients = sorted({r["clients"] for r in f["rows"]})
    lo, hi = str(clients[0]), str(clients[-1])

    def rate(x: dict[str, Any], c: str, pct: str) -> str:
        if c not in x:
            return "–"
        return (
            f"{x[c]['req_per_s']:.0f} ({x[c]['req_per_s_min']:.0f}–{x[c]['req_per_s_max']:.0f}; "
            f"{pct} {x[c][pct + '_ms']:.2g} ms)"
        )

    rows = []
    for name, x in f["summary"].items():
        info = f["servers"][name]
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        if name in f.get("server_versions", {}):
            versions = f"Triton {f['server_versions'][name]}, {versions}"
        against = [(mine, r[name]) for mine, r in ratios.items() if name in r]
        rows.append(
            [
                name,
                versions,
                info["settings"],
                rate(x, lo, "p50"),
                rate(x, hi, "p99"),
                "; ".join(
                    f"{mine}: {r['lo']:.2f} / {r['hi']:.2f} / {r['p99_hi']:.2f}"
                    for mine, r in against
                ),
                " / ".join(f"{x[c]['cpu_ms_per_request']:.2f}" for c in (lo, hi) if c in x),
                f"{x.get('rss_mib', 0):.0f} / {x.get('pss_mib', 0):.0f} ({x.get('processes')})",
                f"{x.get('cold_start_s', 0):.1f}",
                sum(x[c]["errors"] for c in (lo, hi) if c in x),
            ]
        )
    header = [
        "server",
        "versions",
        "settings",
        f"req/s {lo} client (range; p50)",
        f"req/s {hi} clients (range; p99)",
        f"ours ÷ it: req/s {lo} / req/s {hi} / p99 {hi}",
        f"server CPU ms / request at {lo} / {hi}",
        "RSS / PSS MiB (processes)",
        "cold start s",
        "errors",
    ]
    rounds = max((r["round"] for r in f["rows"]), default=0) + 1
    top = ", ".join(f"{label} {score:.4f}" for label, score in f["reference"])
    return "\n\n".join(
        [
            "## Servers a user would pick instead: same graph, same preprocessing, same client",
            run_line(result),
            f"Graph: {f['graph']} (the sha256-checked file), ONNX Runtime with 1 thread a "
            "session in every server, model_store's preprocessing (benchmarks/peer_apps/). "
            f"Body: {f['image']} ({f['image_bytes']} bytes), `wrk -t1`; {rounds} interleaved "
            "rounds (every server started fresh once a round), medians with the range over the "
            "rounds. Each server answered our top-5 before it was timed "
            f"({top}). Memory: the whole process tree after the load, summed (RSS counts shared "
            "pages once per process; PSS splits them). Cold start: launch to the first correct "
            "answer.",
            table(header, rows),
            *[f"Not measured: {name}: {why}" for name, why in f["skipped"].items()],
        ]
    )


def peers_resnet50_section(result: dict[str, Any]) -> str:
    f = result["figures"]
    rows = []
    for name, r in f["servers"].items():
        ratio = f["ratios"].get(name)
        versions = f["peer_versions"].get(name, {}).get("versions", {})
        rows.append(
            [
                name,
                ", ".join(f"{k} {v}" for k, v in versions.items()) or "this repo",
                f"{r['req_per_s']:.1f}",
                f"{r['p99_ms']:.0f}",
                f"{r['cpu_ms_per_request']:.0f}",
                f"{r['memory']['rss'] / 2**20:.0f} / {r['memory']['pss'] / 2**20:.0f}",
                r["memory"]["processes"],
                f"{r['cold_start_s']:.1f}",
                r["errors"],
                f"{ratio['req_per_s']:.2f} / {ratio['cpu_efficiency']:.2f} / {ratio['rss']:.2f}"
                if ratio
                else "",
            ]
        )
    header = ["server", "versions", "req/s", "p99 ms", "server CPU ms / request",
              "RSS / PSS MiB", "processes", "cold start s", "errors",
              "ours vs it: req/s ÷ / its CPU per request ÷ ours / RSS ÷"]  # fmt: skip
    n = len(f["domains"])
    return "\n\n".join(
        [
            f"## ResNet-50 at 224 px, {n} domains: our pruned server vs the peers with {n} "
            "unpruned networks",
            run_line(result),
            f"Ours: one pruned {n}-domain version (β {result['settings']['budget']}); each peer: "
            f"{n} unpruned ResNet-50 graphs as {n} models (one ONNX Runtime thread a session, one "
            "Triton instance a model), random weights, each server checked against its graphs "
            f"in-process first. `wrk -t1` per domain, {result['settings']['clients']} clients "
            f"split over the {n} domains at once, {result['settings']['seconds']:g} s after "
            f"{result['settings']['warmup_s']:g} s of warm-up; a {f['image_bytes']}-byte PNG.",
            table(header, rows),
            *[f"Not measured: {name}: {why}" for name, why in f["skipped"].items()],
        ]
    )


def _peers_targets(f: dict[str, Any]) -> list[list[object]]:
    """Issue 29: ours ahead of every peer by the margins asked, one run, same client."""
    out: list[list[object]] = []
    clients = sorted(int(c) for c in f["summary"]["ours"] if c.isdigit())
    lo, hi = clients[0], clients[-1]
    for mine, peers in _peer_ratios(f).items():
        for name, r in peers.items():
            out += [
                [f"{mine} ÷ {name}, req/s at {lo} client", f"{r['lo']:.2f}", "≥ 1.15",
                 _ok(r["lo"] >= 1.15)],
                [f"{mine} ÷ {name}, req/s at {hi} clients", f"{r['hi']:.2f}", "≥ 1.5",
                 _ok(r["hi"] >= 1.5)],
                [f"{mine} ÷ {name}, p99 at {hi} clients", f"{r['p99_hi']:.2f}", "≤ 0.7",
                 _ok(r["p99_hi"] <= 0.7)],
            ]  # fmt: skip
    return out


def _runtime_targets(rows: list[Row], shape: str, budget: float = 0.5) -> list[list[object]]:
    """Issue 12: the pruned speed-up through ONNX Runtime at the largest batch, against the
    unpruned network in ONNX Runtime, as a share of the MACs ratio; and ORT vs torch."""
    batch = max(r["batch"] for r in rows)

    def median(field: str, strategy: str, at: float | None) -> float | None:
        """The median of `field` over the rows of one strategy at the largest batch."""
        key = (shape, batch, strategy, at)
        found = [
            r[field] for r in rows if (r["shape"], r["batch"], r["strategy"], r["budget"]) == key
        ]
        return statistics.median(found) if found else None

    full = median("ms", "full, ONNX Runtime", None)
    own = median("ms", "own filters, ONNX Runtime", budget)
    own_torch = median("ms", "own filters", budget)
    ratio = median("macs_ratio", "own filters", budget)
    if full is None or own is None or own_torch is None or ratio is None:
        return []
    speedup = full / own
    return [
        [
            f"pruned ÷ unpruned through ONNX Runtime, batch {batch}, β={budget} ({shape})",
            f"{speedup:.2f}x = {speedup / ratio:.2f} of the MACs ratio {ratio:.2f}x",
            "≥ 0.7 of it",
            _ok(speedup >= 0.7 * ratio),
        ],
        [
            "the same pruned views: ONNX Runtime vs torch",
            f"{own:.1f} vs {own_torch:.1f} ms",
            "faster",
            _ok(own < own_torch),
        ],
    ]


def _http_ratios(f: dict[str, Any]) -> dict[str, float]:
    """The HTTP ratios of one http run (same wrk client, same image)."""
    at = {(r["app"], r["clients"]): r for r in f["rows"]}
    lo, hi = min(c for _, c in at), max(c for _, c in at)
    rate = {k: r["req_per_s"] for k, r in at.items()}
    body = rate["body only", hi]
    out = {
        "lo": lo,
        "hi": hi,
        "ours_over_plain_lo": rate["ours", lo] / rate["plain FastAPI", lo],
        "ours_over_plain_hi": rate["ours", hi] / rate["plain FastAPI", hi],
        "ours_over_body_hi": rate["ours", hi] / body,
        "p50_overhead_ms": at["ours", lo]["p50_ms"] - f["inprocess_batch1_ms"],
        "rss_mib": f["server_memory"]["rss"] / 2**20,
    }
    out["variants_over_body_hi"] = {
        app: r / body for (app, c), r in rate.items() if app.startswith("ours, ") and c == hi
    }
    if "inprocess_ceiling" in f:
        ceiling = f["inprocess_ceiling"]["images_per_s"]
        out |= {"ceiling": ceiling, "ceiling_over_body": ceiling / body}
        out["ours_over_ceiling_hi"] = rate["ours", hi] / ceiling
    ceilings = {app: c["images_per_s"] for app, c in f.get("variant_ceilings", {}).items()}
    out["variant_ceilings_over_body"] = {app: c / body for app, c in ceilings.items()}
    out["variants_over_ceiling_hi"] = {
        app: rate[app, hi] / c for app, c in ceilings.items() if (app, hi) in rate
    }
    return out


def http_section(result: dict[str, Any]) -> str:
    f = result["figures"]
    rows = [
        [r["app"], r["clients"], r["req_per_s"], r["p50_ms"], r["p99_ms"], r["non_2xx"]]
        for r in f["rows"]
    ]
    x = _http_ratios(f)
    return "\n\n".join(
        [
            "## HTTP: our server vs a plain FastAPI app vs a body-only route (one wrk client)",
            run_line(result),
            f"Body: {f['image']} ({f['image_bytes']} bytes), `POST` raw `image/png`; our server "
            f"runs `{f['runtime']}`; the plain app runs one torch forward of the same pruned "
            "view per request in FastAPI's threadpool (benchmarks/plain_app.py).",
            table(["app", "clients", "req/s", "p50 ms", "p99 ms", "non-2xx"], rows),
            f"In-process decode + forward at batch 1 (the server's hooks): "
            f"{f['inprocess_batch1_ms']:.2f} ms, so HTTP, queueing and batching add "
            f"{x['p50_overhead_ms']:.2f} ms to the p50 at {x['lo']} client. Server RSS after the "
            f"load: {x['rss_mib']:.0f} MiB (PSS {f['server_memory']['pss'] / 2**20:.0f}).",
            *([_ceiling_line(f, x)] if "ceiling" in x else []),
            *[f"Not measured: {app}: {why}" for app, why in f.get("skipped", {}).items()],
        ]
    )


def _ceiling_line(f: dict[str, Any], x: dict[str, float]) -> str:
    """What the model alone allows: no server can beat its in-process throughput."""
    c = f["inprocess_ceiling"]
    return (
        f"Ceiling: in-process decode + forward at batch {c['batch']} (the server's default "
        f"max batch), every core, runs {x['ceiling']:.0f} images/s "
        f"({c['model_images_per_s']:.0f} for the model alone), "
        f"{x['ceiling_over_body']:.2f} of the body-only route at {x['hi']} clients; "
        f"our server reaches {x['ours_over_ceiling_hi']:.2f} of that ceiling."
        + "".join(
            f" {app}: {f['variant_ceilings'][app]['images_per_s']:.0f} images/s in-process, "
            f"the server {share:.2f} of it."
            for app, share in x["variants_over_ceiling_hi"].items()
        )
    )


def targets(results: dict[str, dict[str, Any]]) -> list[list[object]]:
    """Each target, named by what it measures: the measured figure, the goal, met or not."""
    out: list[list[object]] = []
    if "model" in results:
        rows = results["model"]["figures"]["rows"]
        shape = rows[0]["shape"]
        for r in model_rows(
            [
                x
                for x in rows
                if x["shape"] == shape and x["batch"] == 1 and x["strategy"] == "own filters"
            ]
        ):
            speed, ratio, cpu = float(str(r[8]).split()[0]), r[7], r[9]
            out.append(
                [
                    f"batch-1 speedup, β={r[3]} own filters ({shape})",
                    f"{speed:.2f}x (CPU time {cpu:.2f}x; MACs {ratio:.2f}x)",
                    f"≥ {0.8 * ratio:.2f}x",
                    _ok(speed >= 0.8 * ratio),
                ]
            )
        out += _runtime_targets(rows, shape)
    if "server" in results:
        points = results["server"]["figures"]["points"]
        sat = [
            p
            for p in points
            if p["server"] == "auto" and "http_over_inprocess" in p and p["batch_exact"]
        ]
        if sat:
            p = max(sat, key=lambda p: p["clients"])
            out.append(
                [
                    f"HTTP / in-process, {p['clients']} clients ({p['traffic']}), batch "
                    f"{p['mean_batch']:.1f}",
                    f"{p['http_over_inprocess']:.2f}",
                    "≥ 0.80",
                    _ok(p["http_over_inprocess"] >= 0.8),
                ]
            )
            cpu = p["cpu_inprocess_over_server"]
            out.append(
                [
                    "the same in CPU time: in-process / server CPU",
                    f"{cpu:.2f}",
                    "≥ 0.80",
                    _ok(cpu >= 0.8),
                ]
            )
        for p in points:
            if p["traffic"] == "spread, half max rate" and p["p50_ms"]:
                ratio = p["p99_ms"] / p["p50_ms"]
                out.append(
                    ["p99 / p50 at half max throughput", f"{ratio:.2f}", "≤ 3", _ok(ratio <= 3)]
                )
        per, mixed, auto = (_by(points, s, "spread") for s in ("per-domain", "mixed", "auto"))
        for c in sorted(set(per) & set(mixed) & set(auto)):
            gain = mixed[c]["throughput"] / per[c]["throughput"]
            out.append(
                [
                    f"mixed / per-domain, spread, {c} clients (p99 {mixed[c]['p99_ms']:.0f} "
                    f"vs {per[c]['p99_ms']:.0f} ms)",
                    f"{gain:.2f}x",
                    "≥ 1.5x",
                    _ok(gain >= 1.5),
                ]
            )
        for traffic in ("spread", "one domain"):
            per, mixed, auto = (_by(points, s, traffic) for s in ("per-domain", "mixed", "auto"))
            for c in sorted(set(per) & set(mixed) & set(auto)):
                best = max(per[c]["throughput"], mixed[c]["throughput"])
                share = auto[c]["throughput"] / best
                out.append(
                    [
                        f"auto / better of the two, {traffic}, {c} clients",
                        f"{share:.2f}",
                        "≥ 0.90",
                        _ok(share >= 0.9),
                    ]
                )
    if "http" in results:
        x = _http_ratios(results["http"]["figures"])
        lo, hi = x["lo"], x["hi"]
        out += [
            [
                f"{lo} client: ours ÷ plain FastAPI (req/s)",
                f"{x['ours_over_plain_lo']:.2f}",
                "≥ 3",
                _ok(x["ours_over_plain_lo"] >= 3),
            ],
            [
                f"{hi} clients: ours ÷ plain FastAPI",
                f"{x['ours_over_plain_hi']:.2f}",
                "≥ 3",
                _ok(x["ours_over_plain_hi"] >= 3),
            ],
            [
                f"{hi} clients: ours ÷ body-only route",
                f"{x['ours_over_body_hi']:.2f}",
                "≥ 0.3",
                _ok(x["ours_over_body_hi"] >= 0.3),
            ],
        ]
        for app, ratio in x["variants_over_body_hi"].items():
            out.append(
                [
                    f"{hi} clients: {app} (opt-in) ÷ body-only route",
                    f"{ratio:.2f}",
                    "≥ 0.3",
                    _ok(ratio >= 0.3),
                ]
            )
        if "ceiling" in x:
            out.append(
                [
                    "(bound) in-process decode + forward, fp32, ÷ body-only route",
                    f"{x['ceiling_over_body']:.2f}",
                    "no server exceeds it",
                    "",
                ]
            )
        for app, ratio in x["variant_ceilings_over_body"].items():
            out.append(
                [
                    f"(bound) in-process decode + forward, {app.removeprefix('ours, ')}, "
                    "÷ body-only route",
                    f"{ratio:.2f}",
                    "no server exceeds it",
                    "",
                ]
            )
        out += [
            [
                f"p50 at {lo} client − in-process decode + forward",
                f"{x['p50_overhead_ms']:.2f} ms",
                "≤ 1 ms",
                _ok(x["p50_overhead_ms"] <= 1),
            ],
            [
                "server RSS with the model",
                f"{x['rss_mib']:.0f} MiB",
                "≤ 150 MiB",
                _ok(x["rss_mib"] <= 150),
            ],
        ]
    if "memory" in results:
        f = results["memory"]["figures"]
        for unit in ("rss", "pss"):
            v = f["one_over_two"][unit]
            out.append(
                [
                    f"one server / two single-domain servers ({unit.upper()})",
                    f"{v:.2f}",
                    "< 1",
                    _ok(v < 1),
                ]
            )
    if "resnet50" in results:
        out += _resnet50_targets(results["resnet50"]["figures"])
    if "peers" in results:
        out += _peers_targets(results["peers"]["figures"])
    if "peers_resnet50" in results:
        for name, r in results["peers_resnet50"]["figures"]["ratios"].items():
            out += [
                [f"ResNet-50 224 px, 4 domains: ours (pruned) ÷ {name} (4 unpruned), req/s",
                 f"{r['req_per_s']:.2f}", "≥ 1.7", _ok(r["req_per_s"] >= 1.7)],
                [f"same: RSS, ours ÷ {name}", f"{r['rss']:.2f}", "≤ 0.4", _ok(r["rss"] <= 0.4)],
                [f"same: CPU per request, {name} ÷ ours (not a target: what the shared cores "
                 "do not decide)", f"{r['cpu_efficiency']:.2f}", "–", ""],
            ]  # fmt: skip
    return out


def _resnet50_targets(f: dict[str, Any]) -> list[list[object]]:
    """The serving targets at ResNet-50 224 px."""
    best = {}
    for g in f["graph_speed"]:
        if g["batch"] == 16:  # the faster of the two paths the server can take for a domain
            best[g["domain"]] = max(
                g["view_speedup_over_macs_ratio"], g["union_speedup_over_macs_ratio"]
            )
    out = []
    if best:
        worst = min(best.values())
        out.append(
            ["ResNet-50 224 px β 0.5: speed-up ÷ MACs ratio, batch 16 (worst domain)",
             f"{worst:.2f}", "≥ 0.8", _ok(worst >= 0.8)]
        )  # fmt: skip
    out += [
        ["4 domains in one ResNet-50 server ÷ 4 unpruned servers: RSS", f"{f['rss_ratio']:.2f}",
         "≤ 0.35", _ok(f["rss_ratio"] <= 0.35)],
        ["same: req/s at 32 clients over the 4 domains", f"{f['throughput_ratio']:.2f}",
         "≥ 1.7", _ok(f["throughput_ratio"] >= 1.7)],
        ["our server ÷ its in-process ceiling, ResNet-50 224 px, 32 clients",
         f"{f['server_over_ceiling']:.2f}", "≥ 0.9", _ok(f["server_over_ceiling"] >= 0.9)],
    ]  # fmt: skip
    return out


def _ok(met: bool) -> str:
    return "met" if met else "**missed**"


def targets_table(results: dict[str, dict[str, Any]]) -> str:
    return table(["target", "measured", "goal", ""], targets(results))


def render(results: dict[str, dict[str, Any]]) -> str:
    """The whole of docs/benchmarks.md."""
    sections = {
        "model": model_section,
        "server": server_section,
        "memory": memory_section,
        "http": http_section,
        "resnet50": resnet50_section,
        "peers": peers_section,
        "peers_resnet50": peers_resnet50_section,
    }
    parts = [
        "# Benchmarks",
        "Generated by `make bench` (`python -m benchmarks "
        "[model|server|memory|http|resnet50|peers|all] [--quick]`) from "
        "`benchmarks/results/*.json`; edit `benchmarks/findings.md` and "
        "`benchmarks/method.md`, not this file. Medians after warm-up; ratios are taken within "
        "one run.",
        "## Targets",
        targets_table(results),
        *_text(FINDINGS),
        *(fn(results[name]) for name, fn in sections.items() if name in results),
        *_text(METHOD),
    ]
    return "\n\n".join(parts) + "\n"


def _text(path: Path) -> list[str]:
    return [path.read_text().strip()] if path.exists() else []
