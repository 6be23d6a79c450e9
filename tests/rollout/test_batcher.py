"""The request micro-batcher shared by HFEngine (``kv_cache=False``) and VLLMEngine
(agentrl/rollout/batcher.py): what it groups, where it runs ``generate``, and that a failed
batch fails only its own requests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import types
from types import SimpleNamespace

import pytest

from agentrl.rollout.batcher import collect_batch, serve_batches
from agentrl.rollout.engines import HFEngine, SamplingParams

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A synchronous ``generate`` that records each batch (its prompts and thread) and fails a
    batch holding a prompt in ``fail_on``."""

    def __init__(self, fail_on: tuple[int, ...] = ()) -> None:
        self.batches: list[list[list[int]]] = []
        self.threads: list[str] = []
        self.fail_on = fail_on

    def __call__(self, prompts, params):
        self.batches.append([list(p) for p in prompts])
        self.threads.append(threading.current_thread().name)
        if any(p[0] in self.fail_on for p in prompts):
            raise RuntimeError(f"boom on {prompts}")
        return [f"gen{p[0]}" for p in prompts]


async def _submit(queue: asyncio.Queue, prompt: list[int]) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    await queue.put((prompt, None, fut))
    return fut


def test_collect_batch_waits_the_window_and_caps_the_size():
    async def run():
        queue: asyncio.Queue = asyncio.Queue()
        for i in range(5):
            queue.put_nowait(([i], None, None))
        first = await collect_batch(queue, max_batch_size=3, batch_wait_s=0.05)
        second = await collect_batch(queue, max_batch_size=3, batch_wait_s=0.05)
        queue.put_nowait(([9], None, None))
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, queue.put_nowait, ([10], None, None))  # inside the window: joins
        loop.call_later(0.5, queue.put_nowait, ([11], None, None))  # after it: the next batch
        third = await collect_batch(queue, max_batch_size=3, batch_wait_s=0.1)
        fourth = await collect_batch(queue, max_batch_size=3, batch_wait_s=0.0)
        return first, second, third, fourth

    batches = asyncio.run(run())
    assert [[r[0] for r in b] for b in batches] == [[[0], [1], [2]], [[3], [4]], [[9], [10]], [[11]]]


def test_a_failed_batch_fails_only_its_requests_and_the_batcher_goes_on():
    gen = Recorder(fail_on=(2,))

    async def run():
        queue: asyncio.Queue = asyncio.Queue()
        worker = asyncio.create_task(serve_batches(queue, gen, max_batch_size=2, batch_wait_s=0.05))
        futs = [await _submit(queue, [i]) for i in range(4)]  # batches [0, 1] and [2, 3]
        results = await asyncio.gather(*futs, return_exceptions=True)
        late = await asyncio.wait_for(await _submit(queue, [7]), 5)  # the batcher survived
        worker.cancel()
        return results, late

    results, late = asyncio.run(run())
    assert gen.batches == [[[0], [1]], [[2], [3]], [[7]]]
    assert results[:2] == ["gen0", "gen1"]
    assert all(isinstance(r, RuntimeError) and "boom" in str(r) for r in results[2:])
    assert late == "gen7"


def test_a_cancelled_request_is_skipped_and_generate_runs_on_the_given_executor():
    gen = Recorder()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="only-thread")

    async def run():
        queue: asyncio.Queue = asyncio.Queue()
        worker = asyncio.create_task(serve_batches(queue, gen, max_batch_size=8, batch_wait_s=0.05, executor=pool))
        cancelled, kept = await _submit(queue, [1]), await _submit(queue, [2])
        cancelled.cancel()
        result = await asyncio.wait_for(kept, 5)
        worker.cancel()
        return cancelled, result

    cancelled, result = asyncio.run(run())
    pool.shutdown()
    assert cancelled.cancelled() and result == "gen2"
    assert gen.threads and all(t.startswith("only-thread") for t in gen.threads)


def _hf_engine(monkeypatch):
    model = SimpleNamespace(forward=lambda input_ids: None, config=SimpleNamespace(vocab_size=10))
    return HFEngine(model, pad_token_id=0, kv_cache=False, max_batch_size=2, batch_wait_s=0.05), "hf-engine"


def _vllm_engine(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = lambda **kwargs: SimpleNamespace(kwargs=kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from agentrl.rollout.vllm_engine import VLLMEngine

    return VLLMEngine("m", max_batch_size=2, batch_wait_s=0.05), "asyncio_"  # to_thread's default executor


@pytest.mark.parametrize("make", [_hf_engine, _vllm_engine], ids=["hf-no-cache", "vllm"])
def test_engines_batch_through_the_shared_batcher_and_fail_one_batch(monkeypatch, make):
    """HFEngine(kv_cache=False) on its forward thread, VLLMEngine through asyncio.to_thread."""
    engine, thread_prefix = make(monkeypatch)
    gen = Recorder(fail_on=(5,))
    monkeypatch.setattr(engine, "generate", gen)

    async def run():
        return await asyncio.gather(*(engine.agenerate([p], SamplingParams()) for p in (4, 5, 6)), return_exceptions=True)

    results = asyncio.run(run())
    engine.close()
    assert gen.batches == [[[4], [5]], [[6]]]
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError) and results[2] == "gen6"
    assert gen.threads and all(t.startswith(thread_prefix) for t in gen.threads), gen.threads


def test_queued_engine_starts_its_server_per_event_loop_and_refuses_empty_prompts():
    from agentrl.rollout.batcher import QueuedEngine

    class Echo(QueuedEngine):
        def __init__(self):
            self.started = 0

        async def _serve(self):
            self.started += 1
            while True:
                prompt, _, fut = await self._queue.get()
                fut.set_result(prompt[::-1])

    engine = Echo()
    with pytest.raises(ValueError, match="empty prompt"):
        asyncio.run(engine.agenerate([], None))
    prompt = [1, 2, 3]
    assert asyncio.run(engine.agenerate(prompt, None)) == [3, 2, 1]
    assert asyncio.run(engine.agenerate([4, 5], None)) == [5, 4]  # a new loop: a new server
    assert engine.started == 2 and prompt == [1, 2, 3]

    async def two_on_one_loop():
        return await asyncio.gather(engine.agenerate([6], None), engine.agenerate([7, 8], None))

    assert asyncio.run(two_on_one_loop()) == [[6], [8, 7]] and engine.started == 3
    engine._stop_serving()
    assert engine._worker is None
