"""Scale-out on loopback at a small scale (benchmarks/scaleout.py runs it long): three
`python -m server` replicas on one store behind haproxy (health checks on /readyz), under a
constant, bounded load of 4 clients. Waits poll for states; nothing is asserted on time."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.scaleout import Cluster, Load, kill_and_rejoin, rolling_update
from tests.server.conftest import MODEL, image_bytes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("haproxy") is None, reason="apt-get install haproxy (setup.sh)"
    ),
]
CLIENTS, LIMIT, BETWEEN = 4, 20_000, 30  # LIMIT only bounds the loop; scenarios stop it sooner


@pytest.fixture
def cluster(published_store: Path, tmp_path: Path) -> Iterator[Cluster]:
    store = Path(shutil.copytree(published_store, tmp_path / "store"))
    with Cluster(store, MODEL, tmp_path, 3, threads=1, log_level="warning") as c:
        yield c


def test_rolling_update_under_load_fails_no_request(cluster: Cluster) -> None:
    with Load(cluster.url, image_bytes(1), "dom0", CLIENTS, LIMIT) as load:
        outcome = rolling_update(cluster, load, BETWEEN)
    assert dict(load.failures) == {}
    assert outcome["served"] == [outcome["new"]] * 3  # every replica serves the new version
    assert set(load.versions) == {outcome["old"], outcome["new"]}
    assert load.done >= 4 * BETWEEN


def test_sigkilled_replica_costs_at_most_its_in_flight_requests_and_rejoins(
    cluster: Cluster,
) -> None:
    with Load(cluster.url, image_bytes(2), "dom1", CLIENTS, LIMIT) as load:
        outcome = kill_and_rejoin(cluster, load, 1, BETWEEN)
    assert sum(load.failures.values()) <= CLIENTS  # at most one in flight per client
    assert outcome["rejoined_requests"] > 0  # haproxy sends it requests again
    assert cluster.states() == {"r0": "UP", "r1": "UP", "r2": "UP"}
