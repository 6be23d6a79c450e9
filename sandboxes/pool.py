"""Back-pressure for sandbox calls: a concurrency limiter and a pool wrapper with health checks.

- :class:`ConcurrencyLimiter`: an asyncio semaphore sized from the CPU count (or a setting)
  that measures how long each caller waited for a slot and can refuse callers when too many
  are already waiting (``max_queue``). Every backend puts its ``run`` and session ``exec``
  behind one, so hundreds of envs awaiting a sandbox at once queue instead of oversubscribing
  the cores (which would turn CPU quotas into timeouts).
- :class:`SandboxPool`: wraps any :class:`~agentrl.sandboxes.base.Sandbox` with ``run_many``
  (ordered results of many calls, concurrently, bounded), a cached health check that a
  trainer can poll, and merged metrics. Backend-agnostic: the Docker backend uses the same.

Sizing: ``AGENTRL_SANDBOX_CONCURRENCY`` in the environment overrides the default of twice
the usable cores (sandboxed programs spend part of their life starting up or sleeping).
Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .base import Sandbox
from .types import ExecResult, SandboxConfigError, SandboxError

ENV_CONCURRENCY = "AGENTRL_SANDBOX_CONCURRENCY"


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_concurrency() -> int:
    """``$AGENTRL_SANDBOX_CONCURRENCY`` if set, else 2 x usable cores."""
    raw = os.environ.get(ENV_CONCURRENCY)
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise SandboxConfigError(
                f"{ENV_CONCURRENCY}={raw!r} must be a positive integer (e.g. {2 * usable_cpus()})."
            )
        return value
    return 2 * usable_cpus()


class PoolFullError(SandboxError):
    """More than ``max_queue`` callers were already waiting for a slot."""


class ConcurrencyLimiter:
    """At most ``max_concurrency`` calls at once; others wait in FIFO order.

    ``max_queue=None`` lets any number wait; otherwise a caller arriving when ``max_queue``
    are waiting gets :class:`PoolFullError` at once (shed load instead of growing a queue).
    Create and use it on one event loop (the sandbox background loop).
    """

    def __init__(self, max_concurrency: int | None = None, *, max_queue: int | None = None):
        n = default_concurrency() if max_concurrency is None else max_concurrency
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n > 100_000:
            raise SandboxConfigError(
                f"max_concurrency must be an int in [1, 100000], got {max_concurrency!r}; "
                f"the default here is {default_concurrency()}."
            )
        if max_queue is not None and (not isinstance(max_queue, int) or max_queue < 0):
            raise SandboxConfigError(f"max_queue must be None or an int >= 0, got {max_queue!r}.")
        self.max_concurrency = n
        self.max_queue = max_queue
        self._sem: asyncio.Semaphore | None = None
        self.in_flight = 0
        self.queued = 0
        self.peak_in_flight = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """``async with limiter.slot() as waited_s:`` holds one slot; yields the wait in seconds."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrency)
        if self.max_queue is not None and self._sem.locked() and self.queued >= self.max_queue:
            raise PoolFullError(
                f"{self.queued} sandbox calls are already waiting (max_queue={self.max_queue}) "
                f"with {self.in_flight} running; retry later or raise max_queue/max_concurrency."
            )
        t0 = time.monotonic()
        self.queued += 1
        try:
            await self._sem.acquire()
        finally:
            self.queued -= 1
        waited = time.monotonic() - t0
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield waited
        finally:
            self.in_flight -= 1
            self._sem.release()


class SandboxPool:
    """Many calls against one backend with bounded concurrency and a polled health check.

    >>> pool = SandboxPool(get_sandbox("bwrap"), max_concurrency=8)
    >>> results = await pool.run_many(["print(1)", "print(2)"])

    The backend's own limiter still applies; ``max_concurrency`` here bounds how many of this
    pool's calls are submitted at once (useful to share a backend between several pools).
    """

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        max_concurrency: int | None = None,
        max_queue: int | None = None,
        health_ttl_s: float = 30.0,
    ):
        self.sandbox = sandbox
        self.limiter = ConcurrencyLimiter(max_concurrency, max_queue=max_queue)
        self.health_ttl_s = health_ttl_s
        self._health: dict[str, object] | None = None
        self._health_at = 0.0

    async def run(self, code: str | bytes, **kwargs: Any) -> ExecResult:
        async with self.limiter.slot() as waited:
            result = await self.sandbox.run(code, **kwargs)
        result.extra.setdefault("pool_queue_wait_s", waited)
        return result

    async def run_many(self, codes: Sequence[str | bytes], **kwargs: Any) -> list[ExecResult]:
        """Run every code with the same keyword arguments; results in input order."""
        return list(await asyncio.gather(*(self.run(c, **kwargs) for c in codes)))

    async def health(self, *, force: bool = False) -> dict[str, object]:
        """The backend's ``health()``, cached for ``health_ttl_s``; never raises."""
        now = time.monotonic()
        if force or self._health is None or now - self._health_at > self.health_ttl_s:
            try:
                self._health = await self.sandbox.health()
            except Exception as e:  # noqa: BLE001 - health is reported, not raised
                self._health = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            self._health_at = now
        return self._health

    @property
    def healthy(self) -> bool:
        """The last health check's verdict (False before the first check)."""
        return bool(self._health and self._health.get("ok"))

    def metrics(self) -> dict[str, float]:
        out = dict(self.sandbox.metrics())
        out["sandbox/pool_in_flight"] = float(self.limiter.in_flight)
        out["sandbox/pool_queued"] = float(self.limiter.queued)
        out["sandbox/pool_peak_in_flight"] = float(self.limiter.peak_in_flight)
        return out

    async def close(self) -> None:
        await self.sandbox.close()
