"""Back-pressure, metrics and the worker wire format (backend-agnostic pieces)."""

from __future__ import annotations

import asyncio
import time

import pytest
from agentrl.sandboxes import (
    ExecResult,
    Limits,
    SandboxConfigError,
    Status,
    get_sandbox,
    run_sync,
)
from agentrl.sandboxes.metrics import METRIC_KEYS, SandboxMetrics, percentile
from agentrl.sandboxes.pool import (
    ConcurrencyLimiter,
    PoolFullError,
    SandboxPool,
    default_concurrency,
)
from agentrl.sandboxes.worker import FrameDecoder, ProtocolError, encode_frame


async def test_limiter_bounds_concurrency_and_measures_waits():
    limiter = ConcurrencyLimiter(2)
    waits = []

    async def job():
        async with limiter.slot() as waited:
            waits.append(waited)
            await asyncio.sleep(0.05)

    await asyncio.gather(*(job() for _ in range(6)))
    assert limiter.peak_in_flight == 2 and limiter.in_flight == 0 and limiter.queued == 0
    waits.sort()
    # 6 jobs of 50 ms through 2 slots: two start at once, the last two wait ~100 ms.
    assert waits[0] < 0.03 and waits[-1] >= 0.08


async def test_limiter_sheds_load_past_max_queue():
    limiter = ConcurrencyLimiter(1, max_queue=1)
    gate = asyncio.Event()

    async def hold():
        async with limiter.slot():
            await gate.wait()

    first = asyncio.ensure_future(hold())
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(hold())  # waits in the queue
    await asyncio.sleep(0.01)
    with pytest.raises(PoolFullError, match="1 sandbox calls are already waiting \\(max_queue=1\\)"):
        async with limiter.slot():
            pass
    gate.set()
    await asyncio.gather(first, second)


def test_limiter_and_env_validation(monkeypatch):
    with pytest.raises(SandboxConfigError, match="max_concurrency must be an int in \\[1, 100000\\], got 0"):
        ConcurrencyLimiter(0)
    monkeypatch.setenv("AGENTRL_SANDBOX_CONCURRENCY", "3")
    assert default_concurrency() == 3
    monkeypatch.setenv("AGENTRL_SANDBOX_CONCURRENCY", "lots")
    with pytest.raises(SandboxConfigError, match="AGENTRL_SANDBOX_CONCURRENCY='lots' must be a positive integer"):
        default_concurrency()


def test_percentile_by_hand():
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 99) == 3.0
    # sorted [1, 2, 3, 4]: p50 at rank 1.5 -> 2.5; p99 at rank 2.97 -> 3.97
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([4.0, 1.0, 3.0, 2.0], 99) == pytest.approx(3.97)


def test_metrics_count_statuses_and_latency():
    m = SandboxMetrics(window=3)
    for status, wall in [(Status.OK, 0.1), (Status.TIMEOUT, 2.0), (Status.MEMORY_LIMIT, 0.5), (Status.SANDBOX_ERROR, 0.2)]:
        m.record(ExecResult(status, wall_time_s=wall, cpu_time_s=0.25), queue_wait_s=0.01)
    m.record(ExecResult(Status.RUNTIME_ERROR, wall_time_s=0.3, extra={"restarted": True}))
    snap = m.snapshot()
    assert set(snap) == set(METRIC_KEYS)
    assert snap["sandbox/calls"] == 5 and snap["sandbox/ok"] == 1 and snap["sandbox/timeouts"] == 1
    assert snap["sandbox/ooms"] == 1 and snap["sandbox/errors"] == 1 and snap["sandbox/runtime_errors"] == 1
    assert snap["sandbox/restarts"] == 1 and snap["sandbox/cpu_time_s"] == pytest.approx(1.0)
    # the window keeps the last 3 latencies: 0.5, 0.2, 0.3
    assert snap["sandbox/latency_p50_s"] == pytest.approx(0.3)
    assert snap["sandbox/latency_mean_s"] == pytest.approx((0.5 + 0.2 + 0.3) / 3)


def test_backend_back_pressure_and_pool():
    box = get_sandbox("bwrap", max_concurrency=2, limits=Limits(timeout_s=10))
    try:
        pool = SandboxPool(box, max_concurrency=8)
        codes = [f"import time\ntime.sleep(0.3)\nprint({i} * {i})" for i in range(6)]
        t0 = time.monotonic()
        results = run_sync(pool.run_many(codes))
        elapsed = time.monotonic() - t0
        assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(6)]
        assert box.limiter.peak_in_flight == 2
        assert elapsed >= 0.85  # 6 x 0.3 s through 2 slots: at least 3 rounds
        waits = sorted(r.extra["queue_wait_s"] for r in results)
        assert waits[-1] >= 0.5
        metrics = pool.metrics()
        assert metrics["sandbox/calls"] == 6 and metrics["sandbox/queue_wait_p99_s"] >= 0.5
        assert metrics["sandbox/pool_peak_in_flight"] == 6
        health = run_sync(pool.health())
        assert health["ok"] is True and pool.healthy
    finally:
        box.close_sync()


def test_sixteen_concurrent_runs(bwrap):
    results = run_sync(_gather(bwrap, 16))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(16)]
    assert all(r.ok for r in results) and bwrap.leftover_tasks() == 0


def _gather(sandbox, n):
    async def go():
        return await asyncio.gather(*(sandbox.run(f"print({i})") for i in range(n)))

    return go()


def test_frames_roundtrip_in_any_split():
    data = encode_frame({"op": "exec", "id": 1}, b"code\x00\xff") + encode_frame({"op": "ping", "id": 2})
    for step in (1, 3, 7, len(data)):
        dec = FrameDecoder()
        frames = []
        for i in range(0, len(data), step):
            frames += dec.feed(data[i : i + step])
        assert frames == [({"op": "exec", "id": 1}, b"code\x00\xff"), ({"op": "ping", "id": 2}, b"")]
        assert dec.pending == 0


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"XXXX" + b"\x00" * 12, "bad frame magic"),
        (encode_frame({"a": 1}, b"x" * 10), "blob of 10 bytes is over 4"),
        (b"ARL1" + (5).to_bytes(4, "big") + (0).to_bytes(8, "big") + b"[1,2]", "must be a JSON object"),
        (b"ARL1" + (3).to_bytes(4, "big") + (0).to_bytes(8, "big") + b"{no", "not JSON"),
    ],
)
def test_malformed_frames_are_refused(raw, words):
    with pytest.raises(ProtocolError, match=words):
        FrameDecoder(max_blob_bytes=4).feed(raw)
