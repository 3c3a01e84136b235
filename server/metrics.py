"""Every Prometheus metric, defined once on the app's own registry.

Seconds and histograms throughout, so p99 can be aggregated across instances. A `domain` label
only takes the served model's domain names (anything else is counted as "unknown"), so clients
cannot create series. What the model costs per domain is read from the active version's
manifest at scrape time, so a reload changes it without any bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .batching import Batch

if TYPE_CHECKING:
    from .runner import Served

UNKNOWN = "unknown"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Totals keys in the manifest -> the `scope` label of bap_model_parameters.
PARAMETER_SCOPES = {
    "pruned": "parameters",
    "single_domain": "single_domain_parameters",
    "independent": "independent_parameters",
}


class ModelCollector(Collector):
    """Reads the active version at scrape time: per-domain cost, model size, identity."""

    def __init__(self, active: Callable[[], Served | None]):
        self._active = active

    def collect(self) -> Iterator[Metric]:
        served = self._active()
        if served is None:
            return
        m = served.manifest
        params = GaugeMetricFamily(
            "bap_domain_parameters", "Parameters one domain's filters use", labels=["domain"]
        )
        macs = GaugeMetricFamily(
            "bap_domain_macs", "Multiply-accumulates per image of one domain", labels=["domain"]
        )
        for name, metrics in m.domains.items():
            params.add_metric([name], metrics.parameters)
            macs.add_metric([name], metrics.macs)
        model = GaugeMetricFamily(
            "bap_model_parameters",
            "Parameters: the stored pruned model, one single-domain ResNet-26, N independent ones",
            labels=["scope"],
        )
        for scope, key in PARAMETER_SCOPES.items():
            if (value := m.totals.get(key)) is not None:
                model.add_metric([scope], value)
        baseline = GaugeMetricFamily(
            "bap_model_macs",
            "Multiply-accumulates per image of one single-domain ResNet-26 (the budget's base)",
            labels=["scope"],
        )
        if (value := m.totals.get("baseline_macs")) is not None:
            baseline.add_metric(["single_domain"], value)
        info = GaugeMetricFamily(
            "bap_model_info",
            "The served version and how it runs (value 1)",
            labels=["name", "version", "budget", "runtime", "precision"],
        )
        runtime = served.runtime
        info.add_metric([m.name, m.version, f"{m.budget:g}", runtime.name, runtime.precision], 1)
        load = GaugeMetricFamily("bap_model_load_seconds", "Load + verify + warm-up time")
        load.add_metric([], served.load_seconds)
        yield from (params, macs, model, baseline, info, load)


@dataclass(frozen=True)
class _DomainSeries:
    """One domain's children of the per-domain metrics, resolved once: labels() takes a lock
    and checks and hashes the values on every call, and each request made 8 such calls
    (py-spy and cProfile of the 1-client path put them at a fifth of the server's own Python
    time per request)."""

    depth: Gauge
    wait: Histogram
    inference: Histogram
    size: Histogram
    batches: dict[str, Counter]  # by path


class Metrics:
    """The registry and every metric; also the batcher's observer."""

    def __init__(self, shared: bool = False) -> None:
        """`shared`: this process is one of --workers, whose values prometheus_client keeps in
        the folder the supervisor names (PROMETHEUS_MULTIPROC_DIR, set before the worker
        process starts and so before it imports prometheus_client)."""
        self.shared = shared
        self.registry = r = CollectorRegistry()
        self.request_duration = Histogram(
            "bap_request_duration_seconds",
            "Classify request time, first byte received to response sent",
            ["domain", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "bap_requests", "Classify requests by outcome", ["domain", "code"], registry=r
        )
        # classify requests in progress: this process's count, which the batcher reads
        # (Batcher.can_run_alone), and the gauge, which adds up every worker's (--workers)
        self.requests_in_flight = 0
        self.inflight = Gauge(
            "bap_inflight_requests",
            "Classify requests in progress",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "bap_queue_wait_seconds",
            "Time an image waited for its batch",
            ["domain"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "bap_inference_duration_seconds",
            "Forward time of the batch an image ran in",
            ["domain"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_busy = Counter(
            "bap_inference_busy_seconds",
            "Seconds batches ran, each batch once; over bap_inference_workers: their utilization",
            registry=r,
        )
        self.inference_workers = Gauge(
            "bap_inference_workers",
            "Batches the server runs at once",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "bap_batch_size",
            "Images of this domain in each batch it ran in",
            ["domain"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batches = Counter(
            "bap_batches",
            "Batches by path: domain (own filters only) or mixed (one pass, many domains)",
            ["domain", "path"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "bap_queue_depth",
            "Images waiting for a batch (with --workers: the fullest worker's queue, since the "
            "queue limit is each worker's)",
            ["domain"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "bap_model_reloads", "Reload attempts by result", ["result"], registry=r
        )
        self.served: Served | None = None
        self._known: frozenset[str] = frozenset()
        self._series: dict[str, _DomainSeries] = {}
        self._ok: dict[str, tuple[Histogram, Counter]] = {}  # code 200's children, unknown too
        self._model = ModelCollector(lambda: self.served)
        r.register(self._model)

    def exposition(self) -> CollectorRegistry:
        """What GET /metrics reports. One process: its own registry. A worker: every worker's
        counters, histograms and gauges added up from the shared folder, and the served version
        as this worker sees it (a reload reaches every worker: server.workers)."""
        if not self.shared:
            return self.registry
        shared = CollectorRegistry()
        MultiProcessCollector(shared)
        shared.register(self._model)
        return shared

    def request_started(self) -> None:
        self.requests_in_flight += 1
        self.inflight.inc()

    def domain_label(self, name: str | None) -> str:
        """The label value for a client-supplied domain name: known names only."""
        return name if name in self._known else UNKNOWN

    def model_loaded(self, served: Served) -> None:
        """Accept the version's domains as label values and create their series at zero."""
        names = list(served.index)
        for name in [*names, UNKNOWN]:
            self._ok[name] = (
                self.request_duration.labels(name, "200"),
                self.requests.labels(name, "200"),
            )
        for name in names:
            self._series.setdefault(name, self._resolve(name))
        self.served, self._known = served, frozenset(names)

    def _resolve(self, name: str) -> _DomainSeries:
        """Create (at zero) every batch-side child of one domain."""
        return _DomainSeries(
            depth=self.queue_depth.labels(name),
            wait=self.queue_wait.labels(name),
            inference=self.inference_duration.labels(name),
            size=self.batch_size.labels(name),
            batches={path: self.batches.labels(name, path) for path in ("domain", "mixed")},
        )

    def _of(self, domain: str) -> _DomainSeries:
        if (series := self._series.get(domain)) is None:
            series = self._series[domain] = self._resolve(domain)
        return series

    def request_finished(self, domain: str, code: int, seconds: float) -> None:
        self.requests_in_flight -= 1
        self.inflight.dec()
        if code == 200 and domain in self._ok:
            duration, requests = self._ok[domain]
        else:
            duration = self.request_duration.labels(domain, str(code))
            requests = self.requests.labels(domain, str(code))
        duration.observe(seconds)
        requests.inc()

    def queued(self, domain: str, delta: int) -> None:
        self._of(domain).depth.inc(delta)

    def ran(self, batch: Batch, seconds: float) -> None:
        self.inference_busy.inc(seconds)
        for domain, wait in zip(batch.domains, batch.waits, strict=True):
            self._of(domain).wait.observe(wait)
        for domain in set(batch.domains):
            series = self._of(domain)
            series.size.observe(batch.domains.count(domain))
            series.batches[batch.path].inc()
            series.inference.observe(seconds)
