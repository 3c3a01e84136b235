"""The active version, and the only way to change it: verify a candidate fully, then swap.

A candidate is loaded, sha256-verified, sliced into per-domain views and warmed in a worker
thread while the old version keeps serving; only then does one assignment make it current.
Requests already queued keep the version that accepted them (it is their batcher lane).
A candidate that fails any step is refused and the old version stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio

from model_store import ArtifactError

from .metrics import Metrics
from .runner import Served

log = logging.getLogger(__name__)


class CandidateRefused(Exception):
    """The version CURRENT names could not be loaded, verified or warmed; nothing changed."""


Outcome = tuple[Served | None, Served]  # (the version before, the version now served)
RELOAD_WAIT_S = 120.0  # reload_everywhere: the longest wait for this worker's turn


class ModelHolder:
    """Holds the served version; reloads are serialised so two never race."""

    def __init__(
        self,
        store: Path,
        name: str,
        metrics: Metrics,
        load: Callable[[], Served],
        supervisor: int | None = None,
    ):
        """`load` builds a candidate from CURRENT (runner.setup with the settings bound);
        `supervisor` is the pid of the process that started this worker (--workers), which
        passes SIGHUP to every worker."""
        self.store, self.name, self._metrics, self._load = store, name, metrics, load
        self.supervisor = supervisor
        self.current: Served | None = None
        self._lock = asyncio.Lock()
        self._waiting: list[asyncio.Future[Outcome]] = []  # reload_everywhere's callers

    async def reload_everywhere(self) -> Outcome:
        """A reload of every worker of this server, answered with this worker's outcome: the
        supervisor passes SIGHUP to each worker, this one included, so every worker reloads the
        same way and once. Without a supervisor (or once it is gone) this worker reloads."""
        if self.supervisor is None or os.getppid() != self.supervisor:
            return await self.reload()
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            os.kill(self.supervisor, signal.SIGHUP)
            async with asyncio.timeout(RELOAD_WAIT_S):  # TimeoutError: e.g. it is draining
                return await waiter
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    async def reload(self) -> Outcome:
        """Load CURRENT again and swap it in; CandidateRefused (old version kept) if it is bad.
        Answers the reload_everywhere callers that were waiting when it began."""
        async with self._lock:
            waiting, self._waiting = self._waiting, []
            try:
                outcome = await self._reload()
            except BaseException as exc:  # refused, or interrupted: no caller waits for ever
                failure = exc if isinstance(exc, Exception) else CandidateRefused(repr(exc))
                for waiter in waiting:
                    if not waiter.done():
                        waiter.set_exception(failure)
                raise
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(outcome)
            return outcome

    async def _reload(self) -> Outcome:
        try:
            candidate = await anyio.to_thread.run_sync(self._load)
        except Exception as exc:  # any failure refuses the candidate, never the old version
            self._metrics.reloads.labels("refused").inc()
            expected = isinstance(exc, ArtifactError | OSError | ValueError)
            log.warning(
                "model_refused store=%s name=%s reason=%s",
                self.store,
                self.name,
                exc,
                exc_info=None if expected else exc,
            )
            kept = f"; still serving {self.current.version}" if self.current else ""
            raise CandidateRefused(f"{exc}{kept}") from exc
        return self._install(candidate)

    async def adopt(self, candidate: Served) -> None:
        """Serve a version already loaded, verified and warmed (by `setup`, before start-up)."""
        async with self._lock:
            self._install(candidate)

    def _install(self, candidate: Served) -> Outcome:
        previous, self.current = self.current, candidate
        self._metrics.model_loaded(candidate)
        self._metrics.reloads.labels("loaded").inc()
        log.info(
            "model_loaded name=%s version=%s previous=%s seconds=%.3f",
            self.name,
            candidate.version,
            previous.version if previous else None,
            candidate.load_seconds,
        )
        return previous, candidate
