"""The ``docker`` sandbox backend: a pool of warm, locked-down containers.

How a call runs. Every container is created once from the sandbox image (see
:mod:`agentrl.sandboxes.images`; built from local files on first use when missing) with::

    network none (unless Limits.network), read-only root, tmpfs /work and /tmp (size-capped),
    /dev/shm capped, cap_drop ALL + cap_add SETUID/SETGID/KILL (supervisor only, see below),
    no-new-privileges, docker's default seccomp profile, pids/memory(+swap, same)/CPU limits,
    nofile/fsize/core ulimits, docker-init as PID 1, log driver none, a private IPC namespace;
    programs and session workers also get the bwrap backend's seccomp deny list
    (:mod:`agentrl.sandboxes.seccomp`: ptrace, mount, unshare, keyctl, bpf, TIOCSTI...).

Its main process is the in-container supervisor (:mod:`agentrl.sandboxes.docker_supervisor`),
reached over the container's attached stdin/stdout (one socket per container, read with
asyncio: no thread and no HTTP request per call). A stateless :meth:`DockerSandbox.run` sends
one frame; the supervisor forks the program as uid 1000 in a new session with a cleared
environment and rlimits, drains stdout/stderr with per-stream caps while it runs, enforces the
wall-clock deadline, and when the program ends (or times out, or floods) SIGKILLs *every*
other process in the container (a whole-container kill, so double-forked daemons die too),
reports, then wipes /work, /tmp, /dev/shm, /dev/mqueue and SysV IPC as uid 1000. The host
keeps its own deadline (``timeout_s + grace``): if the supervisor stops answering, the
container is killed and replaced. Containers are replaced, never reused dirty, after any call
that did not end ``ok``/``runtime_error``, after a wipe that failed and after
``max_runs_per_container`` calls. OOMs are read from the container's memory cgroup
(``oom_kill``), pids-cap hits from ``pids.events``, CPU time from ``cpuacct.usage``.

Sessions get a dedicated container from the same pool: the session worker
(:mod:`agentrl.sandboxes.worker`, installed root-owned and read-only) runs through
``docker exec -i`` as uid 1000 and is spoken to over that attached socket; files move through
the worker's ``put``/``get``/``get_dir`` ops, which apply :mod:`agentrl.sandboxes.files`'
no-follow checks *inside* the sandbox. (Docker's archive API is not used: it resolves symlinks
inside the container and writes the container layer directly, bypassing the read-only root,
so it cannot give the no-follow guarantee.) A timeout or crash kills everything in the session
container and the session moves to a fresh container.

What it isolates: network, filesystem (read-only image, nothing of the host mounted, no
docker socket), processes (pid namespace; uid separation from the supervisor), memory, pids,
CPU share, file size, descriptors, IPC, and cross-run state for stateless runs. What it does
not: the kernel is shared (a kernel exploit escapes; use gVisor/Kata via the engine's runtime
for that), ``/proc/self/mountinfo`` shows the engine's data-root path, wall-clock timing side
channels, and disk I/O bandwidth (no blkio limits on this engine).

Requires a reachable Docker engine: ``DOCKER_HOST``, else ``/var/run/docker.sock``, else
``$AGENTRL_DOCKER_SOCKET`` (default ``/run/agentrl-docker.sock``, what
``.ci/docker_engine.sh`` starts). Unix-socket or plain-TCP engines (not TLS, not ssh).
The engine connection, attached streams and the container pool live in
:mod:`agentrl.sandboxes.docker_pool`; this module is the backend and its sessions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import images
from .base import WORK_DIR, FileMap, Language, Sandbox
from .docker_pool import (
    Box,
    Channel,
    ContainerPool,
    DockerStream,
    decode,
    docker_client,
    pool_key,
)
from .metrics import SandboxMetrics
from .pool import ConcurrencyLimiter
from .runtime import arun
from .seccomp import build_filter
from .types import (
    BackendUnavailableError,
    ExecResult,
    Limits,
    SandboxConfigError,
    SandboxError,
    Status,
    sandbox_error,
)
from .worker import ProtocolError, worker_sources
from .worker_client import WorkerDied, WorkerProcess, WorkerSession

log = logging.getLogger(__name__)

OWNER_LABEL = f"{images.LABEL}.owner"
#: MiB added to the container's memory cgroup for the supervisor and docker-init (the program
#: itself is held to Limits.memory_limit_mb plus this slack at most).
SUPERVISOR_MEMORY_MB = 24
#: Extra pids for docker-init and the supervisor on top of Limits.max_processes.
SUPERVISOR_PIDS = 2
#: Root-owned tmpfs holding the program file (``main.py``/``main.sh``) and the session
#: worker's sources: readable by the sandbox user, never writable by it. Same path as bwrap.
_OPT = "/opt/agentrl"
#: The environment of every sandboxed program (bwrap's, plus /usr/local/bin for images whose
#: Python lives there, like python:3.11-slim).
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
    "USER": "sandbox", "LOGNAME": "sandbox", "SHELL": "/bin/bash", "TERM": "dumb",
}


def _command(language: str) -> tuple[list[str], str]:
    """(argv, program file name): the code always runs from ``/opt/agentrl/main.*``, as in bwrap."""
    if language == "python":
        return ["python3", "-I", "-S", f"{_OPT}/main.py"], "main.py"
    return ["bash", "--noprofile", "--norc", f"{_OPT}/main.sh"], "main.sh"


def _status_from_reply(r: dict, stderr: bytes, timeout_s: float) -> tuple[Status, str]:
    """The result status from the supervisor's facts about one run, most specific first."""
    exit_code, sig = r.get("exit_code"), r.get("signal")
    if r.get("oom_kills", 0) > 0:
        return Status.MEMORY_LIMIT, "the memory cgroup OOM-killed a process"
    if r.get("stdout_truncated") or r.get("stderr_truncated"):
        which = [n for n in ("stdout", "stderr") if r.get(f"{n}_truncated")]
        return Status.OUTPUT_LIMIT, f"{' and '.join(which)} passed the output cap; the program was stopped"
    if r.get("pids_max_events", 0) > 0:
        # Even when the program exits 0: its children were refused (a shell fork bomb's
        # parent returns at once). Same rule as the bwrap backend.
        detail = f"hit the process/thread cap ({r['pids_max_events']} refused forks)"
        return Status.RESOURCE_LIMIT, detail + ("; killed at the timeout" if r.get("timed_out") else "")
    if r.get("timed_out"):
        return Status.TIMEOUT, f"killed after the {timeout_s:g} s wall-clock deadline"
    if exit_code == 0:
        return Status.OK, ""
    tail = stderr.rstrip().rsplit(b"\n", 1)[-1]
    if exit_code is not None and tail.startswith(b"MemoryError"):
        return Status.MEMORY_LIMIT, "MemoryError"
    if sig is not None:
        return Status.RUNTIME_ERROR, f"killed by signal {sig}"
    return Status.RUNTIME_ERROR, f"exit code {exit_code}"


def _remove_owned(client: Any, owner: str) -> None:
    """Remove every container one DockerSandbox created (close, finalizer, interpreter exit)."""
    try:
        for c in client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner}"}):
            with contextlib.suppress(Exception):
                c.remove(force=True)
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        pass


class DockerSandbox(Sandbox):
    """Sandbox backend on a Docker engine (see the module docstring for what it isolates).

    Args:
        limits: default per-call limits.
        image: an existing image to use (default: ``$AGENTRL_SANDBOX_IMAGE``, else the local
            image of :func:`agentrl.sandboxes.images.ensure_image`, built on first use).
        pool_size: warm idle containers kept ready for the default limits (0: start on demand).
        max_concurrency: stateless runs and session execs at once (default
            ``pool.default_concurrency()``); also the cap on containers serving runs. More
            callers wait (back-pressure).
        max_queue: callers allowed to wait before ``PoolFullError`` (None: no cap).
        max_runs_per_container: a container is replaced after this many runs.
        max_sessions: sessions open at once (each holds a container); more ``session()``
            calls wait.

    Raises BackendUnavailableError when no engine answers (the message says how to start one).
    All docker objects live on the sandbox background loop (:func:`~agentrl.sandboxes.arun`),
    so one DockerSandbox may be used from any event loop or from sync code.
    """

    name = "docker"

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        image: str | None = None,
        pool_size: int = 2,
        max_concurrency: int | None = None,
        max_queue: int | None = None,
        max_runs_per_container: int = 100,
        max_sessions: int = 256,
    ) -> None:
        super().__init__(limits=limits)  # checks limits
        for arg, value, low in (("pool_size", pool_size, 0), ("max_runs_per_container", max_runs_per_container, 1),
                                ("max_sessions", max_sessions, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SandboxConfigError(f"DockerSandbox({arg}={value!r}): expected an int >= {low}.")
        self.limiter = ConcurrencyLimiter(max_concurrency, max_queue=max_queue)
        self.client = docker_client()
        self._image_arg = image
        self.image: str | None = None
        self.pool_size = pool_size
        self.max_runs_per_container = max_runs_per_container
        self.max_sessions = max_sessions
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="agentrl-docker")
        self._pools: dict[tuple, ContainerPool] = {}
        self._boxes: dict[str, Box] = {}
        self._sessions: set[DockerSession] = set()
        self._tasks: set[asyncio.Future] = set()
        self._closed = False
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._session_slots: asyncio.Semaphore | None = None
        self._metrics = SandboxMetrics()
        self._metrics.limiter = self.limiter
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "docker_supervisor.py"), encoding="utf-8") as fh:
            self._supervisor_code = fh.read()
        self._seccomp = build_filter()
        self._seccomp_b64 = base64.b64encode(self._seccomp).decode() if self._seccomp else None
        self._worker_src = {k: v.encode() for k, v in worker_sources().items()}
        self._worker_src["docker_supervisor.py"] = self._supervisor_code.encode()
        if self._seccomp:
            self._worker_src["seccomp.bpf"] = self._seccomp
        self.counters = {"containers_created": 0, "containers_replaced": 0}
        self._finalizer = weakref.finalize(self, _remove_owned, self.client, self._owner)

    # -- plumbing ------------------------------------------------------------------------------
    async def _blocking(self, fn: Any, *args: Any) -> Any:
        """Run a blocking docker SDK call in this sandbox's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ensure_started(self) -> None:
        if self._closed:
            raise SandboxError("this DockerSandbox is closed; create a new one with get_sandbox('docker').")
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self._session_slots = asyncio.Semaphore(self.max_sessions)
            await self._blocking(self._remove_stale)
            self.image = await self._blocking(lambda: images.ensure_image(self.client, image=self._image_arg))
            self._started = True
            self._pool_for(self.limits).prestart()

    async def start(self) -> None:
        """Build the image if needed and pre-start the warm pool now (otherwise: first call)."""
        await arun(self._ensure_started())

    def _remove_stale(self) -> None:
        """Remove sandbox containers left on this host by processes that died (crash, kill -9)."""
        host = socket.gethostname()
        try:
            stale = self.client.containers.list(all=True, filters={"label": OWNER_LABEL})
        except Exception:  # noqa: BLE001
            return
        for c in stale:
            parts = c.labels.get(OWNER_LABEL, "").split(":")
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            try:
                os.kill(int(parts[1]), 0)
                continue  # owner alive
            except PermissionError:
                continue
            except ProcessLookupError:
                pass
            with contextlib.suppress(Exception):
                c.remove(force=True)

    def _pool_for(self, limits: Limits) -> ContainerPool:
        key = pool_key(limits)
        pool = self._pools.get(key)
        if pool is None:
            warm = self.pool_size if key == pool_key(self.limits) else 0
            pool = self._pools[key] = ContainerPool(self, key, limits, warm, self.limiter.max_concurrency)
        return pool

    def _host_config(self, limits: Limits) -> dict:
        import docker.types

        ws = limits.work_dir_size_mb
        mem = f"{limits.memory_limit_mb + SUPERVISOR_MEMORY_MB}m"
        nofile = max(limits.max_open_files, 64)  # the session worker itself needs a few
        fsize = limits.max_file_size_mb << 20
        inodes = max(1024, ws * 256)
        # Without a network the container still gets docker's generated /etc/hosts (the image's
        # own is hidden under an empty placeholder by docker's init layer, and network_disabled
        # would leave that empty: "localhost" then did not resolve, unlike on bwrap). Its entries
        # match the image's and bwrap's ("localhost", "sandbox" -> 127.0.0.1), and resolv.conf
        # names 127.0.0.1 (glibc's default without one, as on bwrap) instead of the host's
        # resolvers. With a network, docker's defaults stand.
        offline = {} if limits.network else {"extra_hosts": {"sandbox": "127.0.0.1"},
                                             "dns": ["127.0.0.1"]}
        return self.client.api.create_host_config(
            network_mode="bridge" if limits.network else "none",
            **offline,
            read_only=True,
            # nr_inodes: a million empty files must hit ENOSPC, not eat kernel memory.
            tmpfs={
                WORK_DIR: f"size={ws}m,nr_inodes={inodes},uid={images.SANDBOX_UID},"
                          f"gid={images.SANDBOX_UID},mode=0755",
                "/tmp": f"size={ws}m,nr_inodes={inodes},mode=1777",
                _OPT: "size=16m,mode=0755",
            },
            shm_size=f"{min(ws, 64)}m",
            cap_drop=["ALL"],
            cap_add=["SETUID", "SETGID", "KILL"],  # for the supervisor (uid 0) only; see module doc
            security_opt=["no-new-privileges"],
            pids_limit=limits.max_processes + SUPERVISOR_PIDS,
            mem_limit=mem,
            memswap_limit=mem,
            nano_cpus=int(limits.cpus * 1e9),
            init=True,
            ipc_mode="private",
            ulimits=[
                docker.types.Ulimit(name="nofile", soft=nofile, hard=nofile),
                docker.types.Ulimit(name="fsize", soft=fsize, hard=fsize),
                docker.types.Ulimit(name="core", soft=0, hard=0),
            ],
            log_config=docker.types.LogConfig(type="none"),
        )

    def _create_blocking(self, limits: Limits) -> tuple[str, str, Any]:
        name = f"agentrl-sb-{uuid.uuid4().hex[:12]}"
        cfg = json.dumps({"uid": images.SANDBOX_UID, "gid": images.SANDBOX_UID, "work": WORK_DIR,
                          "private": _OPT, "env": _ENV, "seccomp": self._seccomp_b64})
        api = self.client.api
        created = api.create_container(
            self.image,
            command=["python3", "-I", "-S", "-c", self._supervisor_code, cfg],
            user="0:0",
            environment={"AGENTRL_SUPERVISOR": "1"},
            stdin_open=True,
            tty=False,
            working_dir=WORK_DIR,
            hostname="sandbox",
            name=name,
            labels={images.LABEL: "1", OWNER_LABEL: self._owner},
            host_config=self._host_config(limits),
        )
        cid = created["Id"]
        try:
            sockio = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            api.start(cid)
        except Exception:
            with contextlib.suppress(Exception):
                api.remove_container(cid, force=True)
            raise
        return cid, name, sockio

    async def _create_box(self, key: tuple, limits: Limits) -> Box:
        await self._ensure_started()
        if limits.network and not await self._blocking(self._has_bridge):
            raise BackendUnavailableError(
                "Limits(network=True) needs a docker 'bridge' network, and this engine has none "
                "(started with --bridge=none, like .ci/docker_engine.sh's); use the bwrap backend."
            )
        cid, name, sockio = await self._blocking(self._create_blocking, limits)
        chan = Channel(sockio, max_blob_bytes=2 * limits.max_output_bytes + (1 << 20))
        box = Box(cid, name, chan, key)
        self._boxes[cid] = box
        self.counters["containers_created"] += 1
        try:
            reply, _ = await chan.request({"op": "ping", "id": box.next_id()}, timeout_s=60)
        except (asyncio.TimeoutError, EOFError, ProtocolError, OSError) as e:
            self._destroy_soon(box)
            raise SandboxError(
                f"sandbox container {name} did not start its supervisor ({e!r}): {chan.stream.diag()}"
            ) from e
        if self._seccomp and reply.get("seccomp") != "ok":
            self._destroy_soon(box)
            raise SandboxError(f"the seccomp filter cannot be installed in {name}: {reply.get('seccomp')}")
        return box

    def _has_bridge(self) -> bool:
        try:
            return bool(self.client.networks.list(names=["bridge"]))
        except Exception:  # noqa: BLE001
            return False

    def _destroy_soon(self, box: Box) -> None:
        """Forget a container and remove it (SIGKILL + delete) in the background."""
        self._boxes.pop(box.cid, None)
        box.chan.close()
        fut = asyncio.get_running_loop().run_in_executor(self._executor, self._remove_blocking, box.cid)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def _remove_blocking(self, cid: str) -> None:
        try:
            self.client.api.remove_container(cid, force=True)
        except Exception as e:  # noqa: BLE001
            log.debug("docker sandbox: removing %s: %s", cid[:12], e)

    async def _kill_now(self, box: Box) -> None:
        """SIGKILL the whole container now (every process in it dies), remove it later."""
        with contextlib.suppress(Exception):
            await self._blocking(self.client.api.kill, box.cid, "SIGKILL")
        self._destroy_soon(box)

    async def _oom_killed(self, box: Box) -> bool:
        try:
            info = await self._blocking(self.client.api.inspect_container, box.cid)
            return bool(info["State"].get("OOMKilled"))
        except Exception:  # noqa: BLE001
            return False

    # -- stateless runs (arguments checked by Sandbox.run) -----------------------------------
    async def _run_checked(
        self, code: bytes, language: Language, stdin: bytes | bytearray | None, files: dict[str, bytes], limits: Limits
    ) -> ExecResult:
        return await arun(self._run(code, language, stdin, files, limits))

    async def _run(self, code: bytes, language: str, stdin: bytes | None, files: dict[str, bytes],
                   limits: Limits) -> ExecResult:
        waited = 0.0
        try:
            await self._ensure_started()
            async with self.limiter.slot() as waited:
                pool = self._pool_for(limits)
                box = await pool.acquire()
                result = await self._run_in(pool, box, code, language, stdin, files, limits)
        except SandboxConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - engine trouble is a sandbox failure, not the program's
            log.warning("docker run failed: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))
            result = sandbox_error(self.name, f"{type(e).__name__}: {e}")
        result.extra["queue_wait_s"] = waited
        self._metrics.record(result, latency_s=result.extra.get("latency_s", result.wall_time_s) + waited,
                             queue_wait_s=waited)
        return result

    async def _run_in(self, pool: ContainerPool, box: Box, code: bytes, language: str, stdin: bytes | None,
                      files: dict[str, bytes], limits: Limits) -> ExecResult:
        t0 = time.monotonic()
        argv, main = _command(language)
        header = {
            "op": "run", "id": box.next_id(), "argv": argv, "main": main,
            "timeout_s": limits.timeout_s, "max_output_bytes": limits.max_output_bytes,
            "nofile": limits.max_open_files, "fsize_bytes": limits.max_file_size_mb << 20,
            "code_len": len(code), "stdin_len": -1 if stdin is None else len(stdin),
            "files": [[rel, len(data)] for rel, data in files.items()],
        }
        blob = b"".join([code, stdin or b"", *files.values()])
        # The supervisor enforces timeout_s itself; this host-side deadline fires only when the
        # supervisor stops answering, and then the whole container is killed.
        host_deadline = limits.timeout_s * 1.1 + 3.0
        try:
            reply, out = await box.chan.request(header, blob, timeout_s=host_deadline)
        except asyncio.CancelledError:
            # The caller gave up (e.g. its own wait_for): the program may still run, so the
            # container is killed and dropped, in a task of its own.
            self._spawn(self._abandon(pool, box))
            raise
        except (asyncio.TimeoutError, EOFError, ProtocolError, OSError) as e:
            oom = not isinstance(e, asyncio.TimeoutError) and await self._oom_killed(box)
            await self._kill_now(box)
            await pool.discard(box)
            self.counters["containers_replaced"] += 1
            wall = time.monotonic() - t0
            if isinstance(e, asyncio.TimeoutError):
                return ExecResult(Status.TIMEOUT, signal=9, backend=self.name, wall_time_s=wall,
                                  detail=f"no answer within {host_deadline:.1f} s; the whole container was killed",
                                  extra={"latency_s": wall})
            if oom:
                return ExecResult(Status.MEMORY_LIMIT, backend=self.name, wall_time_s=wall,
                                  detail="the container was OOM-killed", extra={"latency_s": wall})
            return sandbox_error(self.name, f"lost the container's supervisor: {e!r}", wall)
        box.runs += 1
        o, e_len = int(reply.get("stdout_len", 0)), int(reply.get("stderr_len", 0))
        stdout, stderr = out[:o], out[o : o + e_len]
        status, detail = _status_from_reply(reply, stderr, limits.timeout_s)
        peak = (reply.get("peak_rss_kb") or 0) / 1024
        result = ExecResult(
            status=status,
            exit_code=None if status is Status.TIMEOUT else reply.get("exit_code"),
            signal=reply.get("signal"),
            stdout=decode(stdout),
            stderr=decode(stderr),
            stdout_truncated=bool(reply.get("stdout_truncated")),
            stderr_truncated=bool(reply.get("stderr_truncated")),
            wall_time_s=float(reply.get("wall_time_s", 0.0)),
            cpu_time_s=float(reply.get("cpu_time_s", 0.0)),
            peak_memory_mb=peak or None,
            backend=self.name,
            detail=detail,
            extra={"container": box.name, "latency_s": time.monotonic() - t0},
        )
        reusable = (
            status in (Status.OK, Status.RUNTIME_ERROR)
            and not reply.get("survivors")
            and box.runs < self.max_runs_per_container
            and not self._closed
        )
        if reusable:
            # Back to the pool once the supervisor reports the wipe done, off the caller's clock.
            self._spawn(pool.release(box, cleaning=asyncio.ensure_future(self._await_clean(box))))
        else:
            self.counters["containers_replaced"] += 1
            await pool.discard(box)
        return result

    async def _abandon(self, pool: ContainerPool, box: Box) -> None:
        await self._kill_now(box)
        await pool.discard(box)
        self.counters["containers_replaced"] += 1

    @staticmethod
    async def _await_clean(box: Box) -> bool:
        try:
            reply, _ = await asyncio.wait_for(box.chan.expect("clean"), 30)
            return bool(reply.get("ok"))
        except Exception:  # noqa: BLE001
            return False

    # -- sessions (arguments checked by Sandbox.session, bad paths before a container is taken) ---
    async def _session_checked(self, kind: Language, files: FileMap | None, limits: Limits) -> DockerSession:
        async def open_session() -> DockerSession:
            await self._ensure_started()
            assert self._session_slots is not None
            await self._session_slots.acquire()
            sess = DockerSession(self, kind, limits, files)
            try:
                await WorkerSession.start(sess)
            except BaseException:
                self._session_slots.release()
                raise
            self._sessions.add(sess)
            return sess

        return await arun(open_session())

    async def _launch_worker(self, kind: str, limits: Limits) -> _DockerWorker:
        """A fresh container from the pool running the session worker (WorkerSession's launcher)."""
        box = await self._pool_for(limits).acquire(for_session=True)
        try:
            names = sorted(self._worker_src)
            await box.chan.request(
                {"op": "install", "id": box.next_id(), "dir": _OPT,
                 "files": [[n, len(self._worker_src[n])] for n in names]},
                b"".join(self._worker_src[n] for n in names),
            )
            stats, _ = await box.chan.request({"op": "stats", "id": box.next_id()})
            sockio = await self._blocking(self._exec_worker_blocking, box.cid, kind)
        except BaseException:
            await self._kill_now(box)
            raise
        stream = DockerStream(sockio)
        # `read` first in the exec'd shell: the worker starts (and says "ready") only once we
        # hold the socket, so no byte can be lost in the HTTP upgrade.
        await stream.write(b"go\n")
        return _DockerWorker(self, box, stream, stats)

    def _exec_worker_blocking(self, cid: str, kind: str) -> Any:
        env = " ".join(f"{k}={v}" for k, v in _ENV.items())
        worker = f"python3 -I -S {_OPT}/worker.py {kind} {WORK_DIR}"
        if self._seccomp:  # the same filter as stateless runs, installed before the worker starts
            worker = (f"python3 -I -S {_OPT}/docker_supervisor.py --seccomp-exec {_OPT}/seccomp.bpf "
                      f"$(command -v python3) -I -S {_OPT}/worker.py {kind} {WORK_DIR}")
        cmd = f"read -r _ && exec env -i {env} {worker}"
        api = self.client.api
        exec_id = api.exec_create(cid, ["sh", "-c", cmd], stdin=True, stdout=True, stderr=True,
                                  user=f"{images.SANDBOX_UID}:{images.SANDBOX_UID}", workdir=WORK_DIR)
        return api.exec_start(exec_id["Id"], socket=True)

    # -- health, metrics, close ----------------------------------------------------------------
    async def health(self) -> dict[str, object]:
        return await arun(self._health())

    async def _health(self) -> dict[str, object]:
        info: dict[str, object] = {"backend": self.name}
        try:
            version = await self._blocking(self.client.version)
            info["engine"] = version.get("Version")
            t0 = time.monotonic()
            res = await self._run(b"print('ok')", "python", None, {},
                                  self.limits.replace(timeout_s=max(5.0, min(self.limits.timeout_s, 30.0))))
            info.update(
                ok=res.status is Status.OK and res.stdout == "ok\n", image=self.image,
                mode=f"container pool (engine {info['engine']}, seccomp {'on' if self._seccomp else 'off'})",
                status=str(res.status), detail=res.detail or res.stderr[-500:],
                latency_s=time.monotonic() - t0, containers=len(self._boxes),
                idle=sum(len(p.idle) for p in self._pools.values()), sessions=len(self._sessions),
                max_concurrency=self.limiter.max_concurrency, **self.counters,
            )
        except Exception as e:  # noqa: BLE001 - health reports, never raises
            info.update(ok=False, error=f"{type(e).__name__}: {e}")
        return info

    def leftover_tasks(self) -> int:
        """Processes in idle pool containers besides docker-init and the supervisor (0 = clean).

        Every run ends with a whole-container kill, so anything here is a bug. Blocking (one
        ``docker top`` per idle container); call it from tests and health checks, not hot paths.
        """
        extra = 0
        for pool in list(self._pools.values()):
            for box in list(pool.idle):
                try:
                    procs = self.client.api.top(box.cid).get("Processes") or []
                except Exception:  # noqa: BLE001 - a container removed meanwhile
                    continue
                extra += max(0, len(procs) - 2)
        return extra

    def metrics(self) -> dict[str, float]:
        out = self._metrics.snapshot()
        out["sandbox/containers"] = float(len(self._boxes))
        out["sandbox/containers_created"] = float(self.counters["containers_created"])
        out["sandbox/containers_replaced"] = float(self.counters["containers_replaced"])
        return out

    async def close(self) -> None:
        if self._closed:
            return
        await arun(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sess in list(self._sessions):
            with contextlib.suppress(Exception):
                await sess._close_here()
        boxes = list(self._boxes.values())
        self._boxes.clear()
        for box in boxes:
            box.chan.close()
        await asyncio.gather(*(self._blocking(self._remove_blocking, b.cid) for b in boxes),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, _remove_owned, self.client, self._owner)
        self._executor.shutdown(wait=False)
        self._finalizer.detach()


class _DockerWorker(WorkerProcess):
    """The session worker in its own container, as :class:`WorkerSession` drives it."""

    def __init__(self, sb: DockerSandbox, box: Box, stream: DockerStream, stats: dict) -> None:
        self.sb, self.box, self.stream = sb, box, stream
        self.baseline = (int(stats.get("oom_kills", 0)), int(stats.get("pids_max_events", 0)))
        self.final: dict | None = None
        self.dead = False

    async def write(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except OSError as e:
            raise WorkerDied(f"cannot write to the session worker: {e}") from None

    async def read(self) -> bytes:
        return await self.stream.read_stdout()

    async def kill(self) -> None:
        """Kill every process in the container (supervisor reset, else a container kill),
        note the cgroup counters for :meth:`post_mortem`, then drop the container."""
        if self.dead:
            return
        self.dead = True
        self.stream.close()
        try:
            await self.box.chan.request({"op": "reset", "id": self.box.next_id()}, timeout_s=5)
            self.final, _ = await self.box.chan.request({"op": "stats", "id": self.box.next_id()}, timeout_s=5)
            self.sb._destroy_soon(self.box)
        except Exception:  # noqa: BLE001 - supervisor gone: kill the container itself
            self.final = {"oom_killed": await self.sb._oom_killed(self.box)}
            await self.sb._kill_now(self.box)
        pool = self.sb._pools.get(self.box.key)
        if pool is not None:
            pool._refill()

    async def post_mortem(self) -> tuple[Status, str]:
        f = self.final or {}
        if f.get("oom_killed") or int(f.get("oom_kills", 0)) > self.baseline[0]:
            return Status.MEMORY_LIMIT, "the memory cgroup OOM-killed the session"
        if int(f.get("pids_max_events", 0)) > self.baseline[1]:
            return Status.RESOURCE_LIMIT, "the process/thread cap (pids cgroup) was hit"
        tail = self.stream.diag()
        return Status.SANDBOX_ERROR, f"the session worker exited{': ' + tail if tail else ''}"


class DockerSession(WorkerSession):
    """A persistent Python REPL or bash in a dedicated container.

    The shared :class:`~agentrl.sandboxes.worker_client.WorkerSession` logic (timeouts,
    restarts with the initial files put back, result mapping, file transfer with
    :mod:`agentrl.sandboxes.files` checks) runs on the sandbox background loop; each public
    method hops there, so a session can be used from any loop or from sync code.
    """

    def __init__(self, sb: DockerSandbox, kind: Language, limits: Limits, files: FileMap | None) -> None:
        self.sandbox = sb

        async def launch() -> WorkerProcess:
            return await sb._launch_worker(kind, limits)

        super().__init__(kind, launch, limits=limits, backend=sb.name, files=files,
                         metrics=sb._metrics, limiter=sb.limiter)

    async def exec(self, code: str | bytes, *, timeout_s: float | None = None) -> ExecResult:
        return await arun(super().exec(code, timeout_s=timeout_s))

    async def put_files(self, files: FileMap) -> None:
        await arun(super().put_files(files))

    async def get_file(self, path: str, *, max_bytes: int = 16 << 20) -> bytes:
        return await arun(super().get_file(path, max_bytes=max_bytes))

    async def put_dir(self, local_dir: str | os.PathLike[str], dest: str = ".") -> None:
        await arun(super().put_dir(local_dir, dest))

    async def get_dir(self, path: str, local_dir: str | os.PathLike[str]) -> list[str]:
        return await arun(super().get_dir(path, local_dir))

    async def restart(self) -> None:
        await arun(super().restart())

    async def close(self) -> None:
        await arun(self._close_here())

    async def _close_here(self) -> None:
        was_closed = self._closed
        await WorkerSession.close(self)
        if not was_closed:
            self.sandbox._sessions.discard(self)
            if self.sandbox._session_slots is not None:
                self.sandbox._session_slots.release()
