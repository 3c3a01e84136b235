"""A closed-loop HTTP load from `wrk` (C, outside Python): N connections posting one image body.

wrk (Debian package, installed by scripts/setup.sh) keeps N requests in flight on keep-alive
connections from one thread, so the client costs little CPU beside the server on a 2-core box.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

POST_BODY = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


class WrkMissing(RuntimeError):
    """wrk is not installed; the message says how to install it."""


def run_wrk(
    url: str,
    body: bytes,
    content_type: str,
    clients: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> dict:
    """req/s, p50/p90/p99 (ms) and error counts of `clients` connections posting `body` (with
    `headers` besides the content type: the v2 binary extension's header length). wrk counts a
    request unanswered after `timeout_s` (its default: 2 s) as a timeout, never as a latency."""
    binary = shutil.which("wrk")
    if binary is None:
        raise WrkMissing("wrk not found: `apt-get install wrk` (scripts/setup.sh does it as root)")
    with tempfile.TemporaryDirectory() as tmp:
        script, data = Path(tmp) / "post.lua", Path(tmp) / "body"
        script.write_text(POST_BODY)
        data.write_bytes(body)
        duration = f"{max(1, round(seconds))}s"
        command = [binary, "-t1", f"-c{clients}", f"-d{duration}", "--latency", "-s", script, url]
        if timeout_s is not None:
            command[1:1] = ["--timeout", f"{max(1, round(timeout_s))}s"]
        env = {"BENCH_BODY": str(data), "BENCH_TYPE": content_type}
        env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return parse(out) | {"clients": clients}


def parse(out: str) -> dict:
    """The figures of wrk's report (its --latency distribution)."""

    def ms(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            raise ValueError(f"no {pct}% latency in wrk's output:\n{out}")
        return float(m.group(1)) * _UNITS[m.group(2)]

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if rate is None:
        raise ValueError(f"no Requests/sec in wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "req_per_s": float(rate.group(1)),
        "p50_ms": ms("50"),
        "p90_ms": ms("90"),
        "p99_ms": ms("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, socket.groups())) if socket else 0,
    }
