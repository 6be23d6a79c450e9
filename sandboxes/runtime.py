"""Run coroutines from sync code (gymnasium's ``step``) on one background event loop.

The sandbox layer is asyncio-first. Sync callers (a plain ``env.step`` loop, the CLI) go
through :func:`run_sync`, which submits the coroutine to a daemon thread's loop. Using one
long-lived loop (not ``asyncio.run`` per call) keeps workers and subprocess transports that
were created by an earlier call usable by later calls, and works even when the caller is
itself inside a running loop (e.g. Jupyter).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide background loop (started on first use, daemon thread)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="agentrl-sandbox-loop", daemon=True
            )
            thread.start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and block until it finishes.

    Raises whatever the coroutine raises. Must not be called from the background loop's own
    thread (that would deadlock); raises RuntimeError if it is.
    """
    loop = background_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError(
            "run_sync() was called from the sandbox background loop itself; "
            "await the coroutine instead."
        )
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


async def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the background loop from any event loop.

    Sandbox objects (subprocess transports, docker streams) belong to the loop that created
    them; routing every call through the one background loop lets callers on other loops (a
    trainer's own ``asyncio.run``) share sessions with sync callers safely.
    """
    loop = background_loop()
    if asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
