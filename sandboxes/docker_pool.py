"""Plumbing of the docker sandbox backend: the engine connection, attached streams, the pool.

- :func:`docker_client`: the first Docker engine that answers, or a BackendUnavailableError
  that says how to start one.
- :class:`DockerStream`: one attached docker stream (a container's stdin/stdout, or a
  ``docker exec -i``) on its raw socket, read and written with asyncio (no thread per call),
  demultiplexing docker's 8-byte frame headers.
- :class:`Channel`: ARL1 frames (the :mod:`agentrl.sandboxes.worker` format) to and from the
  in-container supervisor over a :class:`DockerStream`.
- :class:`ContainerPool`: warm, clean containers for one set of container-level limits, with
  back-pressure and background refills.

Used by :mod:`agentrl.sandboxes.docker_backend`; the ``docker`` SDK is imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from typing import Any

from .types import BackendUnavailableError, Limits
from .worker import FrameDecoder, ProtocolError, encode_frame

log = logging.getLogger(__name__)

ENV_SOCKET = "AGENTRL_DOCKER_SOCKET"
DEFAULT_ENGINE_SOCKET = "/run/agentrl-docker.sock"
START_HINT = (
    "Start one with `source .ci/docker_engine.sh && start_docker_engine` and "
    "`export DOCKER_HOST=unix://$AGENTRL_DOCKER_SOCKET` (installs Debian's docker.io if needed), "
    "or use the daemon-less backend: get_sandbox('bwrap')."
)


def docker_client(timeout_s: float = 60.0) -> Any:
    """A ``docker.DockerClient`` for the first engine that answers, or BackendUnavailableError.

    Uses ``DOCKER_HOST`` when set; otherwise tries ``/var/run/docker.sock``, then
    ``$AGENTRL_DOCKER_SOCKET`` (default ``/run/agentrl-docker.sock``).
    """
    try:
        import docker
    except ImportError as e:  # pragma: no cover - docker is a declared dependency
        raise BackendUnavailableError(f"the docker SDK is not installed ({e}); pip install docker.") from e
    candidates = []
    if os.environ.get("DOCKER_HOST"):  # an explicit choice: never fall back to another engine
        candidates.append(os.environ["DOCKER_HOST"])
    else:
        for path in ("/var/run/docker.sock", os.environ.get(ENV_SOCKET, DEFAULT_ENGINE_SOCKET)):
            if os.path.exists(path):
                candidates.append(f"unix://{path}")
    errors = []
    for url in dict.fromkeys(candidates):
        if url.startswith(("https://", "ssh://")) or os.environ.get("DOCKER_TLS_VERIFY"):
            errors.append(f"{url}: TLS and ssh engines are not supported (use a unix socket)")
            continue
        try:
            client = docker.DockerClient(base_url=url, timeout=int(timeout_s))
            client.ping()
            return client
        except Exception as e:  # noqa: BLE001 - any failure means "not this one"
            errors.append(f"{url}: {e}")
    tried = "; ".join(errors) if errors else "no DOCKER_HOST and no socket file found"
    raise BackendUnavailableError(f"No Docker engine answers ({tried}). {START_HINT}")


def decode(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def pool_key(limits: Limits) -> tuple:
    """The limits a container is created with (the rest are applied per call)."""
    return (
        limits.memory_limit_mb, limits.max_processes, limits.cpus, limits.network,
        limits.work_dir_size_mb, limits.max_open_files, limits.max_file_size_mb,
    )


class DockerStream:
    """One attached docker stream (container attach or ``exec -i``) on a raw socket, read with
    asyncio. Demultiplexes docker's 8-byte-header frames: stdout is returned by
    :meth:`read_stdout`, stderr is kept as a short diagnostic tail."""

    def __init__(self, sockio: Any) -> None:
        self._keep = sockio  # holds the HTTP response (and so the connection) alive
        self.sock: socket.socket = getattr(sockio, "_sock", sockio)
        self.sock.setblocking(False)
        self._mux = bytearray()
        self._out: deque[bytes] = deque()
        self.stderr_tail = bytearray()
        self.eof = False

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def read_stdout(self) -> bytes:
        """Some stdout bytes; b"" once the stream ended."""
        loop = asyncio.get_running_loop()
        while not self._out:
            if self.eof:
                return b""
            try:
                data = await loop.sock_recv(self.sock, 1 << 18)
            except OSError:
                data = b""
            if not data:
                self.eof = True
                continue
            self._mux += data
            while len(self._mux) >= 8:
                kind, size = self._mux[0], int.from_bytes(self._mux[4:8], "big")
                if len(self._mux) < 8 + size:
                    break
                payload = bytes(self._mux[8 : 8 + size])
                del self._mux[: 8 + size]
                if kind == 1:
                    self._out.append(payload)
                else:
                    self.stderr_tail += payload
                    del self.stderr_tail[:-4096]
        return self._out.popleft()

    def alive(self) -> bool:
        """True when the peer has not closed the stream and sent nothing unasked (a cheap,
        non-blocking peek: used before handing out an idle container)."""
        if self.eof or self._out or self._mux:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return False  # b"" (EOF), or bytes an idle supervisor should never send

    def diag(self) -> str:
        return decode(bytes(self.stderr_tail))[-800:]

    def close(self) -> None:
        for obj in (self.sock, self._keep):
            with contextlib.suppress(Exception):
                obj.close()


class Channel:
    """ARL1 frames (:mod:`agentrl.sandboxes.worker`) to and from the in-container supervisor."""

    def __init__(self, sockio: Any, *, max_blob_bytes: int) -> None:
        self.stream = DockerStream(sockio)
        self._frames = FrameDecoder(max_blob_bytes=max_blob_bytes)
        self._pending: deque[tuple[dict, bytes]] = deque()

    async def send(self, header: dict, blob: bytes = b"") -> None:
        await self.stream.write(encode_frame(header, blob))

    async def recv(self) -> tuple[dict, bytes]:
        """The next frame; EOFError when the stream ended, ProtocolError on garbage."""
        while not self._pending:
            chunk = await self.stream.read_stdout()
            if not chunk:
                raise EOFError("the supervisor's stream closed")
            self._pending.extend(self._frames.feed(chunk))
        return self._pending.popleft()

    async def request(self, header: dict, blob: bytes = b"", *, timeout_s: float = 30.0) -> tuple[dict, bytes]:
        """Send one request and wait for the frame answering it (same op), skipping others."""
        await self.send(header, blob)
        op = {"ping": "pong", "run": "result"}.get(header["op"], header["op"])
        return await asyncio.wait_for(self.expect(op), timeout_s)

    async def expect(self, op: str) -> tuple[dict, bytes]:
        while True:
            reply, blob = await self.recv()
            if reply.get("op") == op:
                return reply, blob
            if reply.get("ok") is False:
                raise ProtocolError(f"supervisor error: {reply.get('error')}")

    def close(self) -> None:
        self.stream.close()


class Box:
    """One container and its supervisor channel."""

    def __init__(self, cid: str, name: str, chan: Channel, key: tuple) -> None:
        self.cid, self.name, self.chan, self.key = cid, name, chan, key
        self.runs = 0
        self.ids = 0

    def next_id(self) -> int:
        self.ids += 1
        return self.ids


class ContainerPool:
    """Idle clean containers for one limits key, with a cap on containers in use (back-pressure).

    ``acquire`` returns an idle container, or creates one while under ``max_containers``, or
    waits. ``release`` puts a clean container back; ``discard`` destroys one (in the
    background) and refills the idle set up to ``warm`` containers.
    """

    def __init__(self, owner: Any, key: tuple, limits: Limits, warm: int, max_containers: int):
        self.owner, self.key, self.limits = owner, key, limits
        self.warm, self.max_containers = warm, max_containers
        self.idle: deque[Box] = deque()
        self.in_use = 0
        self.creating = 0
        self.cleaning = 0
        self.warming = 0  # of ``creating``: background pre-starts
        self.cond = asyncio.Condition()

    def total(self) -> int:
        return len(self.idle) + self.in_use + self.creating + self.cleaning

    async def acquire(self, *, for_session: bool = False) -> Box:
        async with self.cond:
            while True:
                if self.idle:
                    box = self.idle.popleft()
                    if not box.chan.stream.alive():  # died while idle (engine restart, docker rm)
                        self.owner._destroy_soon(box)
                        continue
                    if not for_session:
                        self.in_use += 1
                    self._refill()
                    return box
                # Containers being wiped or pre-started are about to be idle: wait for them
                # rather than start yet another (a start costs ~0.5 s of CPU on vfs storage).
                soon = self.cleaning + self.warming
                if (for_session and not soon) or (self.total() < self.max_containers and not soon):
                    self.creating += 1
                    break
                await self.cond.wait()
        try:
            box = await self.owner._create_box(self.key, self.limits)
        except BaseException:
            async with self.cond:
                self.creating -= 1
                self.cond.notify_all()
            raise
        async with self.cond:
            self.creating -= 1
            if not for_session:
                self.in_use += 1
            self.cond.notify_all()
        return box

    async def release(self, box: Box, *, cleaning: asyncio.Future | None = None) -> None:
        """Return a container after a run; ``cleaning`` resolves to True once it is wiped."""
        async with self.cond:
            self.in_use -= 1
            self.cleaning += 1
        ok = False
        try:
            ok = bool(await cleaning) if cleaning is not None else True
        except Exception:  # noqa: BLE001
            ok = False
        async with self.cond:
            self.cleaning -= 1
            if ok and not self.owner._closed:
                self.idle.append(box)
            self.cond.notify_all()
        if not ok:
            self.owner._destroy_soon(box)
            self._refill()

    async def discard(self, box: Box, *, in_use: bool = True) -> None:
        async with self.cond:
            if in_use:
                self.in_use -= 1
            self.cond.notify_all()
        self.owner._destroy_soon(box)
        self._refill()

    def _refill(self) -> None:
        if self.owner._closed:
            return
        # Containers in use by runs and being wiped come back; session containers do not.
        missing = self.warm - len(self.idle) - self.creating - self.cleaning - self.in_use
        for _ in range(max(0, missing)):
            self.creating += 1
            self.warming += 1
            self.owner._spawn(self._warm_one())

    async def _warm_one(self) -> None:
        box = None
        try:
            box = await self.owner._create_box(self.key, self.limits)
        except Exception as e:  # noqa: BLE001 - logged; acquire() will retry and report
            log.warning("docker sandbox: could not pre-start a container: %s", e)
        async with self.cond:
            self.creating -= 1
            self.warming -= 1
            if box is not None:
                if self.owner._closed:
                    self.owner._destroy_soon(box)
                else:
                    self.idle.append(box)
            self.cond.notify_all()

    def prestart(self) -> None:
        self._refill()


