"""The request queue of the in-process engines and the micro-batcher of the batch-at-once ones
(:class:`~agentrl.rollout.engines.HFEngine` with ``kv_cache=False``,
:class:`~agentrl.rollout.vllm_engine.VLLMEngine`).

``agenerate`` (:class:`QueuedEngine`) puts ``(prompt_ids, params, future)`` on an asyncio
queue; :func:`serve_batches` takes the first request, waits up to ``batch_wait_s`` for more (at
most ``max_batch_size`` in all), runs the engine's synchronous ``generate(prompts, params)`` for
them in a worker thread and resolves each future with its Generation (or raises, to that
request alone, an exception ``generate`` returned in its place: a request that failed alone). An
exception raised by ``generate`` fails that batch's requests and nothing else: the batcher goes
on with the next batch. (HFEngine's continuous-batching scheduler serves the same queue its own way.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

Request = tuple[list[int], Any, asyncio.Future]

log = logging.getLogger(__name__)


class QueuedEngine:
    """The request side, mixed into an Engine (before :class:`~agentrl.rollout.engines.Engine`):
    ``agenerate`` puts ``(prompt_ids, params, future)`` on ``self._queue`` and awaits the future;
    the task serving the queue (:meth:`_serve`) is started on the running event loop at the
    first request, and again when it ended or belongs to another loop (``asyncio.run`` per
    call)."""

    _queue: asyncio.Queue | None = None
    _worker: asyncio.Task | None = None

    def _serve(self) -> Coroutine[Any, Any, None]:
        """The coroutine that serves ``self._queue`` (e.g. :func:`serve_batches`)."""
        raise NotImplementedError

    async def agenerate(self, prompt_ids: list[int], params: Any) -> Any:
        if not prompt_ids:
            raise ValueError("agenerate() got an empty prompt")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._serve())
        fut: asyncio.Future = loop.create_future()
        await self._queue.put((list(prompt_ids), params, fut))
        return await fut

    def _stop_serving(self) -> None:
        """Cancel the serving task (``close``); the next request starts a new one."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None


async def collect_batch(queue: asyncio.Queue, max_batch_size: int, batch_wait_s: float) -> list[Request]:
    """The next batch: the first request (waited for without limit), then whatever else arrives
    within ``batch_wait_s`` of it, up to ``max_batch_size`` requests."""
    batch = [await queue.get()]
    deadline = time.perf_counter() + batch_wait_s
    while len(batch) < max_batch_size:
        timeout = deadline - time.perf_counter()
        if timeout <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), timeout))
        except asyncio.TimeoutError:
            break
    return batch


async def serve_batches(
    queue: asyncio.Queue,
    generate: Callable[[list[list[int]], list[Any]], list[Any]],
    *,
    max_batch_size: int,
    batch_wait_s: float,
    executor: concurrent.futures.Executor | None = None,
    what: str = "generation",
    logger: logging.Logger | None = None,
) -> None:
    """Serve ``queue`` forever (until cancelled): one ``generate`` call per collected batch.

    Args:
        queue: ``(prompt_ids, params, future)`` requests.
        generate: the engine's synchronous batched generation, one result per prompt, in order;
            an exception instance as a result fails that request only.
        executor: the thread to run ``generate`` on (HFEngine's single forward thread);
            None runs it through :func:`asyncio.to_thread`.
        what, logger: how a failed batch is logged (``"<what> failed for a batch of N"``).
    """
    loop = asyncio.get_running_loop()
    logger = logger or log
    while True:
        batch = await collect_batch(queue, max_batch_size, batch_wait_s)
        prompts, params = [b[0] for b in batch], [b[1] for b in batch]
        try:
            if executor is None:
                gens = await asyncio.to_thread(generate, prompts, params)
            else:
                gens = await loop.run_in_executor(executor, generate, prompts, params)
            for (_, _, fut), gen in zip(batch, gens):
                if not fut.done():
                    if isinstance(gen, BaseException):
                        fut.set_exception(gen)
                    else:
                        fut.set_result(gen)
        except Exception as e:  # an engine failure fails these requests, not the batcher
            logger.exception("%s failed for a batch of %d", what, len(batch))
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
