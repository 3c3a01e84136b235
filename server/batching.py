"""Dynamic batching: bounded queues per domain, batches closed at max size or max delay.

Knows nothing of images or models. An item is an opaque payload with a domain name and a lane;
`run` (called in the inference executor, off the event loop) gets one Batch and returns one
result per item, in order. Up to `workers` batches run at once, each in its own executor thread;
the next batch forms only when one of them is free, so items queue (and batches grow) only
while every worker is busy. With `inline_max_s`, a batch expected to run within that long runs on
the event loop's own thread instead (see INLINE_MAX_S). A lane is one loaded model version: items
of different lanes never share a batch, so a reload never mixes versions and in-flight items
finish on the version that accepted them.

Which items form a batch (`policy`):
- per-domain: only one domain's items, run through that domain's own filters. A batch closes when
  any domain has `max_batch_size` items queued, or when the oldest item has waited `max_delay`.
- mixed: the oldest items of any domains, in one batch (the runtime runs it view by view, or in
  one pass of the union graph: model_store/runtimes/graph_set.py). A batch closes when
  `max_batch_size` items are queued in total, or at the oldest item's deadline.
- auto: closes like mixed. A domain with `auto_domain_batch` items waiting (default: a full
  batch) then runs on its own, oldest such domain first: its own filters are the cheapest path
  per image once its batch is large enough. Otherwise the batch is mixed if more than one domain
  is waiting and per-domain if only one is. Lower `auto_domain_batch` where measurements show
  per-domain batches of that size beat one mixed pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

RunPath = Literal["domain", "mixed"]
POLICIES = ("per-domain", "mixed", "auto")
# A lone request may run on the caller's thread (run_alone) when its lane's last one-item batch
# ran in at most this long (the bundled model: 0.5 ms idle, 1-1.6 ms on a busy 2-core box), so a
# request arriving meanwhile waits no more than that; a ResNet-50 (30-55 ms) never runs there.
ALONE_MAX_S = 0.002
# A process that is one of several --workers, with one batch at a time of its own, has a core to
# itself: the executor's thread hop then overlaps nothing and costs the hop, the GIL hand-offs and
# the caches the loop's work evicts mid-batch. Its quick batches run on the loop instead: bundled
# model, 2 workers on 2 cores, wrk -c32, three interleaved runs (2026-12-06): median req/s 1,907
# against 1,799, 1,615 against 1,502, 1,679 against 1,657 (ahead in 11 of 14 rounds), p99 no
# higher. The loop answers nothing while such a batch runs, so a batch runs there only when the
# lane's last batch took at most this long and so would this one at that batch's time per image
# (16 images of the bundled model: ~10 ms; of a ResNet-50 at 224 px: 0.5-0.9 s, so the batch
# after such a one goes to the executor).
INLINE_MAX_S = 0.05


class QueueFull(Exception):
    """A domain's queue holds max_queue items; the client should retry shortly."""

    def __init__(self, domain: str, limit: int):
        super().__init__(f"the queue for domain {domain!r} is full ({limit} images waiting)")
        self.domain = domain


class BatcherDied(Exception):
    """The batching loop itself failed: nothing queued can run until the process restarts."""


class BatcherClosed(Exception):
    """The server is draining for shutdown and accepts no new work."""


@dataclass(frozen=True)
class Batch:
    """What one call of `run` processes: all items share the lane; one domain unless mixed."""

    lane: Any
    path: RunPath
    domains: list[str]
    payloads: list[Any]
    waits: list[float]  # seconds each item spent queued


class BatchObserver(Protocol):
    """Receives queue and batch events (the metrics implement this)."""

    def queued(self, domain: str, delta: int) -> None: ...

    def ran(self, batch: Batch, seconds: float) -> None: ...


@dataclass(eq=False)
class _Item:
    lane: Hashable
    domain: str
    payload: Any
    seq: int
    enqueued: float
    future: asyncio.Future[Any] = field(repr=False)


class Batcher:
    """Collects submitted items into batches and runs up to `workers` at once in `executor`
    (which needs that many threads)."""

    def __init__(
        self,
        run: Callable[[Batch], Sequence[Any]],
        executor: Executor,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        policy: str = "auto",
        auto_domain_batch: int | None = None,
        observer: BatchObserver | None = None,
        workers: int = 1,
        requests_in_flight: Callable[[], int] | None = None,
        inline_max_s: float = 0.0,
    ):
        if policy not in POLICIES:
            raise ValueError(f"batching policy must be one of {POLICIES}, got {policy!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        # requests the server holds now, the caller's included (None: only the caller)
        self._requests_in_flight = requests_in_flight or (lambda: 1)
        self._run, self._executor, self._observer = run, executor, observer
        self.max_batch_size, self.max_delay_s, self.max_queue = (
            max_batch_size,
            max_delay_s,
            max_queue,
        )
        self.policy = policy
        self.auto_domain_batch = auto_domain_batch or max_batch_size
        self._queues: dict[tuple[Hashable, str], deque[_Item]] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None  # why the loop stopped, if it died
        self._running = 0  # batches in the executor now
        # the last one-item batch: its lane and run time (one slot, so no old version is kept)
        self._last_one: tuple[Hashable, float] | None = None
        # a batch expected to run within this long runs on the loop's thread (0: never)
        self.inline_max_s = inline_max_s
        # the last batch's lane, run time and size, for that expectation (one slot too)
        self._last_batch: tuple[Hashable, float, int] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="bap-batcher")

    async def close(self) -> None:
        """Refuse new items, run every queued one without waiting for deadlines, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def submit(self, lane: Hashable, domain: str, payload: Any) -> Any:
        """Queue one item and wait for its own result."""
        if (died := self.death()) is not None:
            raise died
        if self._closing:
            raise BatcherClosed("the server is shutting down")
        queue = self._queues.setdefault((lane, domain), deque())
        if len(queue) >= self.max_queue:
            raise QueueFull(domain, self.max_queue)
        loop = asyncio.get_running_loop()
        item = _Item(lane, domain, payload, next(self._seq), time.monotonic(), loop.create_future())
        queue.append(item)
        self._notify_queued(domain, 1)
        self._wake.set()
        return await item.future

    def can_run_alone(self, lane: Hashable) -> bool:
        """The caller is the server's only request, nothing is queued or running, and this
        lane's last one-item batch was quick: one item then costs less on the caller's thread
        than the executor's two thread hops (profiled at one client: the hops and the loop turns
        around them were the request path's cost). With other requests in the server (being
        decoded or answered on the event loop) a batch on the loop would take the loop from
        them: bundled model, `wrk -c32`, 2026-12-06, 896 req/s with the loop doing 8.2 of 10
        CPU-seconds against 1,018-1,106 with every batch in the executor."""
        last = self._last_one
        quick = last is not None and last[0] == lane and last[1] <= ALONE_MAX_S
        idle = not self._queues and not self._running and not self._closing
        alone = self._requests_in_flight() <= 1
        return quick and idle and alone and self.failure is None

    def run_alone(self, lane: Hashable, domain: str, payload: Any) -> Any:
        """Run one item as a batch of its own now, on this thread (only when can_run_alone):
        the same `run`, checks and observer as a batch from the queue."""
        batch = Batch(lane=lane, path="domain", domains=[domain], payloads=[payload], waits=[0.0])
        started = time.monotonic()
        results = self._run(batch)
        if len(results) != 1:
            raise RuntimeError(f"run returned {len(results)} results for 1 item")
        seconds = time.monotonic() - started
        self._last_one = (lane, seconds)
        self._observe("ran", batch, seconds)
        return results[0]

    def death(self) -> BatcherDied | None:
        """What every request hears once the loop has died (None while it runs)."""
        if self.failure is None:
            return None
        return BatcherDied(f"the batcher stopped ({self.failure!r}); the server needs a restart")

    def _notify_queued(self, domain: str, delta: int) -> None:
        self._observe("queued", domain, delta)

    def _observe(self, event: str, *args: Any) -> None:
        """Tell the observer (metrics); its failure is logged, never the loop's."""
        if self._observer is None:
            return
        try:
            getattr(self._observer, event)(*args)
        except Exception:
            log.exception("batch observer failed on %s; serving goes on", event)

    async def _loop(self) -> None:
        items: list[_Item] = []
        free = asyncio.Semaphore(self.workers)
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            free.release()

        try:
            while True:
                await free.acquire()  # a batch forms only once a worker can take it
                if (batch := await self._next_batch()) is None:
                    break
                path, items = batch
                task = asyncio.get_running_loop().create_task(self._execute(path, items))
                running.add(task)
                task.add_done_callback(finished)
                items = []
            await asyncio.gather(*running)  # close(): what already runs finishes
        except Exception as exc:  # a bug in batching itself: fail loudly, never hang
            log.exception("batching loop died")
            self.failure = exc
            died = self.death()
            for item in [*items, *(i for q in self._queues.values() for i in q)]:
                if not item.future.done():
                    item.future.set_exception(died)
            self._queues.clear()

    async def _next_batch(self) -> tuple[RunPath, list[_Item]] | None:
        while True:
            self._wake.clear()
            if not self._queues:
                if self._closing:
                    return None
                await self._wake.wait()
                continue
            oldest = min((q[0] for q in self._queues.values()), key=lambda item: item.seq)
            deadline = oldest.enqueued + self.max_delay_s
            due = self._closing or time.monotonic() >= deadline
            choice = self._choose(oldest, due)
            if choice is not None:
                path, domains = choice
                return path, self._take(oldest.lane, domains)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._wake.wait()

    def _choose(self, oldest: _Item, due: bool) -> tuple[RunPath, list[str]] | None:
        """Which path and which domains' queues the next batch takes, or None to keep waiting."""
        waiting = {d: q for (lane, d), q in self._queues.items() if lane == oldest.lane}

        def oldest_with(size: int) -> list[str]:
            ready = [d for d, q in waiting.items() if len(q) >= size]
            return [min(ready, key=lambda d: waiting[d][0].seq)] if ready else []

        if self.policy == "per-domain":
            if full := oldest_with(self.max_batch_size):
                return "domain", full
            return ("domain", [oldest.domain]) if due else None
        if not due and sum(len(q) for q in waiting.values()) < self.max_batch_size:
            return None
        if self.policy == "mixed":
            return "mixed", list(waiting)
        alone = oldest_with(self.auto_domain_batch)
        if alone or len(waiting) == 1:
            return "domain", alone or [oldest.domain]
        return "mixed", list(waiting)

    def _take(self, lane: Hashable, domains: list[str]) -> list[_Item]:
        """Pop up to max_batch_size items, oldest first, from these domains' queues."""
        taken: list[_Item] = []
        while len(taken) < self.max_batch_size:
            heads = [self._queues[(lane, d)] for d in domains if (lane, d) in self._queues]
            if not heads:
                break
            queue = min(heads, key=lambda q: q[0].seq)
            item = queue.popleft()
            if not queue:
                del self._queues[(lane, item.domain)]
            self._notify_queued(item.domain, -1)
            if not item.future.done():  # a cancelled request (client gone) is not computed
                taken.append(item)
        return taken

    async def _execute(self, path: RunPath, items: list[_Item]) -> None:
        if not items:
            return
        started = time.monotonic()
        batch = Batch(
            lane=items[0].lane,
            path=path,
            domains=[i.domain for i in items],
            payloads=[i.payload for i in items],
            waits=[started - i.enqueued for i in items],
        )
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            if self._quick_enough_inline(batch.lane, len(items)):
                results, run_s = self._timed(batch)
            else:
                results, run_s = await loop.run_in_executor(self._executor, self._timed, batch)
            if len(results) != len(items):
                raise RuntimeError(f"run returned {len(results)} results for {len(items)} items")
        except Exception as exc:  # the batch's requests fail; the loop keeps serving
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._running -= 1
        if len(items) == 1:
            self._last_one = (batch.lane, run_s)
        self._last_batch = (batch.lane, run_s, len(items))
        self._observe("ran", batch, time.monotonic() - started)
        for item, result in zip(items, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _quick_enough_inline(self, lane: Hashable, size: int) -> bool:
        """This lane's last batch ran within inline_max_s, and would have with `size` items at
        its time per item (nothing measured yet: no; the first batch goes to the executor)."""
        if self.inline_max_s <= 0 or self._last_batch is None:  # 0: never, whatever the clock
            return False
        lane_last, seconds, items = self._last_batch
        expected = max(seconds, seconds / items * size)
        return lane_last == lane and expected <= self.inline_max_s

    def _timed(self, batch: Batch) -> tuple[Sequence[Any], float]:
        """`run` and how long it took on its thread (the thread hops not counted)."""
        started = time.monotonic()
        return self._run(batch), time.monotonic() - started
