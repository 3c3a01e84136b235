"""The active version, and the only way to change it: verify a candidate fully, then swap.

A candidate is loaded, sha256-verified, sliced into per-domain views and warmed in a worker
thread while the old version keeps serving; only then does one assignment make it current.
Requests already queued keep the version that accepted them (it is their batcher lane).
A candidate that fails any step is refused and the old version stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import anyio

from model_store import ArtifactError

from .metrics import Metrics
from .runner import Served

log = logging.getLogger(__name__)


class CandidateRefused(Exception):
    """The version CURRENT names could not be loaded, verified or warmed; nothing changed."""


class ModelHolder:
    """Holds the served version; reloads are serialised so two never race."""

    def __init__(self, store: Path, name: str, metrics: Metrics, load: Callable[[], Served]):
        """`load` builds a candidate from CURRENT (runner.setup with the settings bound)."""
        self.store, self.name, self._metrics, self._load = store, name, metrics, load
        self.current: Served | None = None
        self._lock = asyncio.Lock()

    async def reload(self) -> tuple[Served | None, Served]:
        """Load CURRENT again and swap it in; CandidateRefused (old version kept) if it is bad."""
        async with self._lock:
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

    def _install(self, candidate: Served) -> tuple[Served | None, Served]:
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
