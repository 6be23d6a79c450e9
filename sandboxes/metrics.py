"""Counters and latency percentiles for sandbox calls, with stable ``sandbox/*`` keys.

Every backend owns one :class:`SandboxMetrics` and calls :meth:`SandboxMetrics.record` once
per finished call (stateless ``run`` or session ``exec``); ``Sandbox.metrics()`` returns
:meth:`SandboxMetrics.snapshot`. The trainer logs the snapshot as is. Keys (all floats):

``sandbox/calls``            calls finished (every status)
``sandbox/ok``               status ok
``sandbox/runtime_errors``   status runtime_error (the program's own failure)
``sandbox/timeouts``         status timeout
``sandbox/ooms``             status memory_limit
``sandbox/output_limits``    status output_limit
``sandbox/resource_limits``  status resource_limit (pids cap)
``sandbox/errors``           status sandbox_error (never the model's fault)
``sandbox/restarts``         sessions restarted after a crash or timeout
``sandbox/latency_p50_s``, ``sandbox/latency_p99_s``, ``sandbox/latency_mean_s``
                             wall time of a call as the caller saw it, queue wait included,
                             over the last ``window`` calls
``sandbox/queue_wait_p50_s``, ``sandbox/queue_wait_p99_s``
                             time spent waiting for a concurrency slot (back-pressure)
``sandbox/cpu_time_s``       total CPU seconds of sandboxed programs
``sandbox/in_flight``, ``sandbox/queued``
                             calls running / waiting right now (from the limiter)

Thread-safe: ``record`` runs on the sandbox event loop, ``snapshot`` on any thread.
Standard library only.
"""

from __future__ import annotations

import threading
from collections import deque

from .types import ExecResult, Status

_STATUS_KEYS = {
    Status.OK: "sandbox/ok",
    Status.RUNTIME_ERROR: "sandbox/runtime_errors",
    Status.TIMEOUT: "sandbox/timeouts",
    Status.MEMORY_LIMIT: "sandbox/ooms",
    Status.OUTPUT_LIMIT: "sandbox/output_limits",
    Status.RESOURCE_LIMIT: "sandbox/resource_limits",
    Status.SANDBOX_ERROR: "sandbox/errors",
}

METRIC_KEYS = (
    "sandbox/calls",
    *_STATUS_KEYS.values(),
    "sandbox/restarts",
    "sandbox/latency_p50_s",
    "sandbox/latency_p99_s",
    "sandbox/latency_mean_s",
    "sandbox/queue_wait_p50_s",
    "sandbox/queue_wait_p99_s",
    "sandbox/cpu_time_s",
    "sandbox/in_flight",
    "sandbox/queued",
)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; 0.0 if empty."""
    if not values:
        return 0.0
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


class SandboxMetrics:
    """Counts statuses and keeps the last ``window`` latencies and queue waits."""

    def __init__(self, window: int = 4096):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("sandbox/calls", *_STATUS_KEYS.values(), "sandbox/restarts"), 0)
        self._latency: deque[float] = deque(maxlen=window)
        self._queue_wait: deque[float] = deque(maxlen=window)
        self._cpu = 0.0
        self.limiter = None  # set by the owner to report in_flight/queued

    def record(self, result: ExecResult, *, latency_s: float | None = None, queue_wait_s: float = 0.0) -> None:
        """Count one finished call. ``latency_s`` defaults to ``result.wall_time_s``."""
        with self._lock:
            self._counts["sandbox/calls"] += 1
            self._counts[_STATUS_KEYS[result.status]] += 1
            if result.extra.get("restarted"):
                self._counts["sandbox/restarts"] += 1
            self._latency.append(float(result.wall_time_s if latency_s is None else latency_s))
            self._queue_wait.append(float(queue_wait_s))
            self._cpu += float(result.cpu_time_s or 0.0)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {k: float(v) for k, v in self._counts.items()}
            lat = list(self._latency)
            qw = list(self._queue_wait)
            out["sandbox/cpu_time_s"] = self._cpu
        out["sandbox/latency_p50_s"] = percentile(lat, 50)
        out["sandbox/latency_p99_s"] = percentile(lat, 99)
        out["sandbox/latency_mean_s"] = sum(lat) / len(lat) if lat else 0.0
        out["sandbox/queue_wait_p50_s"] = percentile(qw, 50)
        out["sandbox/queue_wait_p99_s"] = percentile(qw, 99)
        limiter = self.limiter
        out["sandbox/in_flight"] = float(limiter.in_flight) if limiter is not None else 0.0
        out["sandbox/queued"] = float(limiter.queued) if limiter is not None else 0.0
        return out
