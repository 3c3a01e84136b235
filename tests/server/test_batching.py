"""The batcher alone (no model, no HTTP): which items share a batch, and that each gets its own.

Deadlines are set far beyond the test's run time, so every batch here closes by size or by
close(); nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest

from server.batching import Batch, Batcher, BatcherClosed, QueueFull

pytestmark = pytest.mark.anyio
NEVER = 3600.0  # seconds: a deadline no test reaches
CAP_SECONDS = 60.0  # a wait that only a broken batcher reaches


class Recorder:
    """A fake model: records every batch and answers each payload with (domain, payload)."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def __call__(self, batch: Batch) -> list[Any]:
        self.batches.append(batch)
        return list(zip(batch.domains, batch.payloads, strict=True))

    def shapes(self) -> list[tuple[str, list[str]]]:
        return [(b.path, b.domains) for b in self.batches]


@asynccontextmanager
async def batcher(run: Any, **kwargs: Any) -> AsyncIterator[Batcher]:
    options = {"max_batch_size": 4, "max_delay_s": NEVER, "max_queue": 16} | kwargs
    with ThreadPoolExecutor(options.get("workers", 1)) as executor:
        b = Batcher(run, executor, **options)
        b.start()
        try:
            yield b
        finally:
            await b.close()


async def submit_all(b: Batcher, items: list[tuple[str, int]], lane: object = "v1") -> list[Any]:
    return await asyncio.gather(*(b.submit(lane, d, p) for d, p in items))


async def test_batch_closes_at_size_and_each_item_gets_its_own_result() -> None:
    run = Recorder()
    async with batcher(run, policy="per-domain") as b:
        items = [("a", i) for i in range(8)]
        assert await submit_all(b, items) == items
    assert run.shapes() == [("domain", ["a"] * 4)] * 2


async def test_per_domain_never_mixes_domains() -> None:
    run = Recorder()
    async with batcher(run, policy="per-domain") as b:
        items = [(d, i) for i in range(4) for d in "abc"]  # interleaved arrivals
        assert await submit_all(b, items) == items
    assert sorted(run.shapes()) == [("domain", [d] * 4) for d in "abc"]


async def test_mixed_takes_oldest_items_of_any_domain() -> None:
    run = Recorder()
    async with batcher(run, policy="mixed", max_batch_size=6) as b:
        items = [(d, i) for i in range(2) for d in "abc"]
        assert await submit_all(b, items) == items
    assert run.shapes() == [("mixed", [d for d, _ in items])]


async def test_auto_runs_a_domain_alone_when_it_fills_a_batch() -> None:
    run = Recorder()
    async with batcher(run, policy="auto") as b:
        await submit_all(b, [("a", i) for i in range(4)])
    assert run.shapes() == [("domain", ["a"] * 4)]


async def test_auto_mixes_when_traffic_is_spread() -> None:
    run = Recorder()
    async with batcher(run, policy="auto", max_batch_size=6) as b:
        await submit_all(b, [(d, i) for i in range(2) for d in "abc"])
    assert [path for path, _ in run.shapes()] == ["mixed"]


async def test_auto_runs_a_domain_alone_from_its_configured_size() -> None:
    run = Recorder()
    async with batcher(run, policy="auto", auto_domain_batch=2) as b:
        pending = asyncio.gather(*(b.submit("v1", d, i) for i, d in enumerate("abac")))
        await asyncio.sleep(0)  # the fourth item fills the batch: 'a' has 2, so it runs alone
        await b.close()  # b and c were left waiting; closing runs them together
        await pending
    assert run.shapes() == [("domain", ["a", "a"]), ("mixed", ["b", "c"])]


async def test_close_runs_queued_items_without_waiting_for_their_deadline() -> None:
    run = Recorder()
    async with batcher(run, policy="auto", max_batch_size=64) as b:
        pending = asyncio.gather(b.submit("v1", "a", 1), b.submit("v1", "b", 2))
        await asyncio.sleep(0)  # let both enqueue
        await b.close()
        assert await pending == [("a", 1), ("b", 2)]
        with pytest.raises(BatcherClosed):
            await b.submit("v1", "a", 3)
    # Two domains were waiting at close, so auto ran them as one mixed batch.
    assert run.shapes() == [("mixed", ["a", "b"])]


async def test_full_queue_refuses_and_the_rest_still_run() -> None:
    run = Recorder()
    async with batcher(run, policy="per-domain", max_batch_size=64, max_queue=2) as b:
        first = asyncio.gather(b.submit("v1", "a", 1), b.submit("v1", "a", 2))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="'a'"):
            await b.submit("v1", "a", 3)
        other = asyncio.ensure_future(b.submit("v1", "b", 4))  # other domains have their own
        await asyncio.sleep(0)
        await b.close()
        assert await first == [("a", 1), ("a", 2)]
        assert await other == ("b", 4)


async def test_lanes_never_share_a_batch() -> None:
    run = Recorder()
    async with batcher(run, policy="mixed", max_batch_size=64) as b:
        old = asyncio.gather(*(b.submit("v1", d, 0) for d in "ab"))
        new = asyncio.gather(*(b.submit("v2", d, 1) for d in "ab"))
        await asyncio.sleep(0)
        await b.close()
        await old, await new
    assert [(batch.lane, batch.domains) for batch in run.batches] == [
        ("v1", ["a", "b"]),
        ("v2", ["a", "b"]),
    ]


async def test_a_failing_batch_fails_only_its_items() -> None:
    def run(batch: Batch) -> list[Any]:
        if batch.payloads[0] == "boom":
            raise RuntimeError("model exploded")
        return batch.payloads

    async with batcher(run, policy="per-domain", max_batch_size=1) as b:
        with pytest.raises(RuntimeError, match="exploded"):
            await b.submit("v1", "a", "boom")
        assert await b.submit("v1", "a", "fine") == "fine"


async def test_a_wrong_result_count_is_an_error_not_a_misrouted_answer() -> None:
    async with batcher(lambda batch: batch.payloads[:-1], policy="mixed", max_batch_size=2) as b:
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await submit_all(b, [("a", 1), ("b", 2)])


async def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="per-domain"):
        async with batcher(Recorder(), policy="fastest"):
            pass


class Gate(Recorder):
    """A model whose first `held` batches block until released: what busy workers look like."""

    def __init__(self, held: int = 1) -> None:
        super().__init__()
        self.held, self.calls = held, itertools.count()
        self.entered, self.release = threading.Semaphore(0), threading.Event()

    def __call__(self, batch: Batch) -> list[Any]:
        if next(self.calls) < self.held:
            self.entered.release()
            self.release.wait()
        return super().__call__(batch)

    async def running(self) -> None:
        """Wait until one more held batch is inside the model (fail, not hang, if none comes)."""
        wait = partial(self.entered.acquire, timeout=CAP_SECONDS)
        assert await asyncio.get_running_loop().run_in_executor(None, wait), "no batch started"


async def test_without_a_delay_an_idle_worker_runs_at_once_and_a_busy_one_batches() -> None:
    run = Gate()
    async with batcher(run, policy="auto", max_delay_s=0.0, max_batch_size=8) as b:
        first = asyncio.ensure_future(b.submit("v1", "a", 0))  # alone, idle worker: runs now
        await run.running()
        later = [asyncio.ensure_future(b.submit("v1", "a", i)) for i in range(1, 6)]
        await asyncio.sleep(0)  # the five are queued while the first batch runs
        run.release.set()
        assert await first == ("a", 0)
        assert [await f for f in later] == [("a", i) for i in range(1, 6)]
    assert run.shapes() == [("domain", ["a"]), ("domain", ["a"] * 5)]


async def test_two_workers_run_two_batches_at_once_and_the_next_forms_when_one_is_free() -> None:
    run = Gate(held=2)
    async with batcher(run, policy="auto", max_delay_s=0.0, max_batch_size=8, workers=2) as b:
        first = asyncio.ensure_future(b.submit("v1", "a", 0))
        try:
            await run.running()
            second = asyncio.ensure_future(b.submit("v1", "a", 1))  # a free worker: runs now
            await run.running()  # inside the model while the first batch still is
            later = [asyncio.ensure_future(b.submit("v1", "a", i)) for i in range(2, 6)]
            await asyncio.sleep(0)  # queued while both workers are busy
        finally:
            run.release.set()
        assert (await first, await second) == (("a", 0), ("a", 1))
        assert [await f for f in later] == [("a", i) for i in range(2, 6)]
    assert sorted(len(batch.payloads) for batch in run.batches) == [1, 1, 4]


async def test_no_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        async with batcher(Recorder(), workers=0):
            pass


class ThreadRecorder(Recorder):
    """Also records which thread ran each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def __call__(self, batch: Batch) -> list[Any]:
        self.threads.append(threading.get_ident())
        return super().__call__(batch)


async def test_a_lone_item_of_a_quick_lane_runs_on_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("server.batching.ALONE_MAX_S", 60.0)  # quick whatever the box's load
    run = ThreadRecorder()
    async with batcher(run, max_delay_s=0.0) as b:
        assert not b.can_run_alone("v1")  # nothing measured yet: the first goes to a worker
        assert await b.submit("v1", "a", 0) == ("a", 0)
        assert b.can_run_alone("v1") and not b.can_run_alone("v2")  # measured for v1 only
        assert b.run_alone("v1", "a", 1) == ("a", 1)
    assert run.threads[0] != threading.get_ident() and run.threads[1] == threading.get_ident()
    assert run.shapes() == [("domain", ["a"]), ("domain", ["a"])]


async def test_quick_batches_run_on_the_loops_thread_once_measured() -> None:
    """inline_max_s: the first batch of a lane is measured in the executor; later batches
    expected within the limit run on the event loop's own thread, with their own results."""
    run = ThreadRecorder()
    async with batcher(run, max_delay_s=0.0, inline_max_s=60.0) as b:
        assert await b.submit("v1", "a", 0) == ("a", 0)
        assert await b.submit("v1", "a", 1) == ("a", 1)
        assert await b.submit("v2", "a", 5) == ("a", 5)  # v2 not measured yet
        assert await b.submit("v2", "a", 6) == ("a", 6)
    loop_thread = threading.get_ident()
    assert [t == loop_thread for t in run.threads] == [False, True, False, True]


async def test_a_batch_expected_over_the_limit_goes_to_the_executor() -> None:
    """Expected time = the lane's last time per item x the batch's size: 4 items at >= 5 ms each
    (sleep never returns early) are over 15 ms, so they leave the loop free; without
    inline_max_s nothing runs on it."""

    class Slow(ThreadRecorder):
        def __call__(self, batch: Batch) -> list[Any]:
            time.sleep(0.005 * len(batch.payloads))
            return super().__call__(batch)

    run = Slow()
    async with batcher(run, max_delay_s=0.0, inline_max_s=0.015) as b:
        await b.submit("v1", "a", 0)  # measured: >= 5 ms an item
        await submit_all(b, [("a", i) for i in range(4)])  # expected >= 20 ms: executor
        await b.submit("v1", "a", 5)  # the last batch took >= 20 ms: executor, whatever its size
    loop_thread = threading.get_ident()
    assert [len(batch.payloads) for batch in run.batches] == [1, 4, 1]
    assert loop_thread not in run.threads
    run = ThreadRecorder()
    async with batcher(run, max_delay_s=0.0) as b:
        for i in range(3):
            await b.submit("v1", "a", i)
    assert loop_thread not in run.threads


async def test_no_inline_limit_means_never_even_when_the_clock_sees_no_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clock too coarse to see a batch (run time 0) must not turn inline_max_s 0 into 'on'."""

    class StoppedClock:
        @staticmethod
        def monotonic() -> float:
            return 0.0

    monkeypatch.setattr("server.batching.time", StoppedClock)
    run = ThreadRecorder()
    async with batcher(run, max_delay_s=0.0) as b:
        for i in range(3):
            await b.submit("v1", "a", i)
    assert len(run.threads) == 3 and threading.get_ident() not in run.threads


async def test_an_inline_batch_that_fails_fails_only_its_own_requests() -> None:
    class FailsOnce(ThreadRecorder):
        def __call__(self, batch: Batch) -> list[Any]:
            if batch.payloads == [1]:
                self.threads.append(threading.get_ident())
                raise RuntimeError("model error")
            return super().__call__(batch)

    run = FailsOnce()
    async with batcher(run, max_delay_s=0.0, inline_max_s=60.0) as b:
        await b.submit("v1", "a", 0)
        with pytest.raises(RuntimeError, match="model error"):
            await b.submit("v1", "a", 1)
        assert await b.submit("v1", "a", 2) == ("a", 2)
    assert run.threads[1:] == [threading.get_ident()] * 2  # the failing batch ran on the loop


async def test_nothing_runs_alone_while_other_requests_are_in_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests being decoded or answered on the event loop are not in the batcher's queues;
    a batch run on the loop would take it from them, so an item runs alone only as the
    server's one request."""
    monkeypatch.setattr("server.batching.ALONE_MAX_S", 60.0)
    in_flight = [1]
    async with batcher(
        ThreadRecorder(), max_delay_s=0.0, requests_in_flight=lambda: in_flight[0]
    ) as b:
        assert await b.submit("v1", "a", 0) == ("a", 0)  # measured: quick
        assert b.can_run_alone("v1")
        in_flight[0] = 2
        assert not b.can_run_alone("v1")
        in_flight[0] = 1
        assert b.can_run_alone("v1")


async def test_nothing_runs_alone_beside_queued_or_running_items_or_for_a_slow_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = Gate(held=2)  # the first is measured; the second holds the worker
    # "quick" by any measure: the gate's run time is the test's own pace, not the model's
    monkeypatch.setattr("server.batching.ALONE_MAX_S", 60.0)
    async with batcher(run, max_delay_s=0.0, max_batch_size=8) as b:
        first = asyncio.ensure_future(b.submit("v1", "a", 0))
        await run.running()
        run.release.set()
        await first
        run.release.clear()
        assert b.can_run_alone("v1")
        busy = asyncio.ensure_future(b.submit("v1", "a", 1))
        await run.running()
        assert not b.can_run_alone("v1")  # a batch is running
        queued = asyncio.ensure_future(b.submit("v1", "a", 2))
        await asyncio.sleep(0)
        assert not b.can_run_alone("v1")  # and one is queued behind it
        run.release.set()
        assert (await busy, await queued) == (("a", 1), ("a", 2))
        assert b.can_run_alone("v1")
        monkeypatch.setattr("server.batching.ALONE_MAX_S", 0.0)  # every lane is now "slow"
        assert not b.can_run_alone("v1")
