"""Process supervision for the bwrap backend: one started sandbox, its output, its end.

- :class:`Spawned`: a started bwrap process, its cgroup, exit detection through a pidfd, the
  kill (the cgroup's tasks and the sandbox's pid 1, sparing bwrap so its exit proves the pid
  namespace is empty) and the reaping (cgroup counters, removal).
- :class:`Supervisor`: one stateless call: drains stdout/stderr concurrently with per-stream
  caps, feeds stdin, runs the wall-clock watchdog and maps what happened to a
  :class:`~agentrl.sandboxes.types.Status`.
- :class:`BwrapWorker`: a session's sandbox as a :class:`~agentrl.sandboxes.worker_client.WorkerProcess`.

Split from ``bwrap.py`` (which builds the sandbox and its command line) to keep both files
readable. Standard library only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time

from . import cgroups as _cg
from .types import ExecResult, Limits, Status
from .worker_client import WorkerDied, WorkerProcess

log = logging.getLogger(__name__)


def _status_from_rc(rc: int) -> tuple[int | None, int | None]:
    """(exit_code, signal) from bwrap's exit status (it exits 128+N when the program got N)."""
    if rc < 0:
        return None, -rc
    if 128 < rc < 128 + 65:
        return None, rc - 128
    return rc, None


class Memfds:
    """Memfds bwrap reads at start-up (``--file``, ``--seccomp``); closed after spawn."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def add(self, data: bytes, name: str = "agentrl") -> int:
        fd = os.memfd_create(name, 0)  # not CLOEXEC: bwrap must inherit it
        self.fds.append(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class Spawned:
    """A started bwrap process with its pipes and cgroup."""

    def __init__(self, proc: subprocess.Popen, cg: _cg.CallCgroup | None, started: float):
        self.proc = proc
        self.cg = cg
        self.started = started
        self.returncode: int | None = None
        self.rusage_cpu = 0.0
        self.pidfd = os.pidfd_open(proc.pid)
        self.exited = asyncio.get_running_loop().create_future()
        self.stats: _cg.CgroupStats | None = None
        asyncio.get_running_loop().add_reader(self.pidfd, self._on_exit)
        self.governor: _cg.CpuGovernor | None = None
        self._gov_timer: asyncio.TimerHandle | None = None
        if cg is not None:
            self.governor = _cg.CpuGovernor(cg)
            self._gov_timer = asyncio.get_running_loop().call_later(self.governor.period_s, self._govern)

    def _govern(self) -> None:
        """Every governor period while the sandbox runs: its CPU weight follows its attained CPU."""
        if self.returncode is None and self.governor is not None:
            try:
                self.governor.tick()
            except Exception:  # noqa: BLE001 - a weight is an optimisation: keep the call going
                log.debug("CPU governor tick failed", exc_info=True)
            self._gov_timer = asyncio.get_running_loop().call_later(self.governor.period_s, self._govern)

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.pidfd)
        if self._gov_timer is not None:
            self._gov_timer.cancel()
        try:
            _, status, ru = os.wait4(self.proc.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            self.rusage_cpu = max(self.rusage_cpu, ru.ru_utime + ru.ru_stime)
        except ChildProcessError:
            self.returncode = self.proc.poll() if self.proc.returncode is None else self.proc.returncode
        self.proc.returncode = self.returncode
        if not self.exited.done():
            self.exited.set_result(self.returncode)

    def _inner_pids(self) -> list[int]:
        """bwrap's children (the sandbox's pid 1), from /proc/<pid>/task/<pid>/children."""
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                return [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            return []

    def _tree_cpu_s(self) -> float:
        """CPU seconds of bwrap and every live descendant (rlimits mode has no cpuacct; used
        for accounting just before a kill, never to decide what to kill)."""
        total, todo, tick = 0.0, [self.proc.pid], os.sysconf("SC_CLK_TCK")
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
                total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
                with open(f"/proc/{pid}/task/{pid}/children") as fh:
                    todo.extend(int(x) for x in fh.read().split())
            except (OSError, ValueError, IndexError):
                continue
        return total

    def kill(self) -> None:
        """SIGKILL everything in the sandbox: the cgroup's tasks and the sandbox's pid 1 (the
        kernel then kills the whole pid namespace). bwrap itself is spared when it already
        has a child, because it exits only after that child, and so after the namespace is
        empty: its exit then means the sandbox is gone, tmpfs teardown included."""
        if self.returncode is not None:
            if self.cg is not None:
                self.cg.kill_all()
            return
        inner = self._inner_pids()
        if self.cg is None:
            self.rusage_cpu = max(self.rusage_cpu, self._tree_cpu_s())
        if self.cg is not None:
            self.cg.kill_all(exclude=() if not inner else (self.proc.pid,))
        for pid in inner:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not inner:  # still starting: nothing runs inside yet
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def reap(self) -> None:
        """Wait until bwrap and every task of the cgroup are gone, read the cgroup's counters,
        remove the cgroup, close the pidfd."""
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), 5.0)
        except asyncio.TimeoutError:
            self.kill()
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.exited
        if self.cg is not None:
            deadline = time.monotonic() + 10.0
            while self.cg.pids() and time.monotonic() < deadline:
                if time.monotonic() > deadline - 9.0:
                    self.cg.kill_all(rounds=1)
                await asyncio.sleep(0.005)
            self.stats = self.cg.stats()
            # rmdir after the caller has its result: the directories are empty already.
            asyncio.get_running_loop().call_soon(self.cg.remove)
        try:
            os.close(self.pidfd)
        except OSError:
            pass


class Supervisor:
    """Drives one stateless call: drains stdout/stderr with caps, feeds stdin, enforces the
    wall-clock timeout, then maps what happened to a status."""

    def __init__(self, sb, sp: Spawned, limits: Limits, out_r: int, err_r: int,
                 in_w: int | None, stdin: bytes | None):
        self.sb, self.sp, self.limits = sb, sp, limits
        self.loop = asyncio.get_running_loop()
        self.fds = {out_r: 0, err_r: 1}
        self.bufs = [bytearray(), bytearray()]
        self.trunc = [False, False]
        self.open = set(self.fds)
        self.eof = self.loop.create_future()
        self.reason: str | None = None  # "timeout" | "output"
        self.in_w, self.stdin = in_w, memoryview(stdin or b"")
        for fd in self.fds:
            self.loop.add_reader(fd, self._on_read, fd)
        if in_w is not None:
            os.set_blocking(in_w, False)
            self.loop.add_writer(in_w, self._on_write)
        self.timer = self.loop.call_later(limits.timeout_s, self._kill, "timeout")
        self.sampler = None
        if sp.cg is None:
            # rlimits mode has no cpuacct and bwrap does not wait for its pid 1, so the
            # program's CPU never reaches bwrap's rusage: sample the process tree instead.
            self.sampler = self.loop.call_later(0.05, self._sample_cpu)

    def _sample_cpu(self) -> None:
        if self.sp.returncode is None:
            self.sp.rusage_cpu = max(self.sp.rusage_cpu, self.sp._tree_cpu_s())
            self.sampler = self.loop.call_later(0.05, self._sample_cpu)

    def _on_read(self, fd: int) -> None:
        idx = self.fds[fd]
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close_read(fd)
            return
        buf = self.bufs[idx]
        room = self.limits.max_output_bytes - len(buf)
        if len(chunk) > room:
            buf += chunk[: max(room, 0)]
            self.trunc[idx] = True
            self._kill("output")
            self._close_read(fd)
        else:
            buf += chunk

    def _close_read(self, fd: int) -> None:
        if fd in self.open:
            self.loop.remove_reader(fd)
            os.close(fd)
            self.open.discard(fd)
            if not self.open and not self.eof.done():
                self.eof.set_result(None)

    def _on_write(self) -> None:
        try:
            n = os.write(self.in_w, self.stdin[: 1 << 16])
            self.stdin = self.stdin[n:]
        except BlockingIOError:
            return
        except OSError:
            self.stdin = self.stdin[:0]
        if not self.stdin:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.in_w is not None:
            self.loop.remove_writer(self.in_w)
            os.close(self.in_w)
            self.in_w = None

    def _kill(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.killed_at = time.monotonic()
        self.sp.kill()

    async def result(self) -> ExecResult:
        sp = self.sp
        try:
            await sp.exited
            # The pid namespace is gone, so every writer is closed; a short grace covers data
            # still in the pipes.
            try:
                await asyncio.wait_for(asyncio.shield(self.eof), 2.0)
            except asyncio.TimeoutError:
                pass
        except asyncio.CancelledError:
            self._kill("cancelled")
            raise
        finally:
            self.timer.cancel()
            if self.sampler is not None:
                self.sampler.cancel()
            for fd in list(self.open):
                self._close_read(fd)
            self._close_stdin()
            if sp.returncode is None:
                sp.kill()
            await sp.reap()
        wall = time.monotonic() - sp.started
        return self._classify(wall)

    def _classify(self, wall: float) -> ExecResult:
        sp, lim = self.sp, self.limits
        exit_code, sig = _status_from_rc(sp.returncode if sp.returncode is not None else -9)
        st = sp.stats
        stderr = self.bufs[1].decode("utf-8", "replace")
        r = ExecResult(
            status=Status.OK,
            exit_code=exit_code,
            signal=sig,
            stdout=self.bufs[0].decode("utf-8", "replace"),
            stderr=stderr,
            stdout_truncated=self.trunc[0],
            stderr_truncated=self.trunc[1],
            wall_time_s=wall,
            cpu_time_s=st.cpu_time_s if st is not None else sp.rusage_cpu,
            peak_memory_mb=(st.peak_memory_bytes / (1 << 20)) if st is not None else None,
            backend=self.sb.name,
        )
        if self.reason is not None:
            r.exit_code, r.signal = None, signal.SIGKILL
        tail = stderr[-2000:]
        memory_error = "MemoryError" in tail or "Cannot allocate memory" in tail
        # The pids cap counts even when the program exits 0: its children were refused (a
        # shell fork bomb's parent returns at once). rlimits mode has no counter: the
        # EAGAIN messages of Python and bash are the evidence.
        if st is not None:
            pids_hit = st.pids_max_hits > 0
        else:
            pids_hit = "fork: retry: Resource temporarily unavailable" in tail or (exit_code != 0 and (
                "can't start new thread" in tail
                or ("BlockingIOError" in tail and "Resource temporarily unavailable" in tail)
            ))
        if st is not None and st.oom_kills > 0:
            r.status, r.detail = Status.MEMORY_LIMIT, f"OOM killed at the {lim.memory_limit_mb} MiB memory cap"
        elif self.reason == "output":
            r.status = Status.OUTPUT_LIMIT
            r.detail = f"output passed max_output_bytes={lim.max_output_bytes}; the sandbox was killed"
        elif pids_hit:
            r.status = Status.RESOURCE_LIMIT
            refused = f" ({st.pids_max_hits} refused forks)" if st is not None else ""
            r.detail = f"hit the cap of {lim.max_processes} processes+threads{refused}"
            if self.reason == "timeout":
                r.detail += f"; killed at the {lim.timeout_s:g} s timeout"
        elif self.reason == "timeout":
            r.status, r.detail = Status.TIMEOUT, f"killed after {lim.timeout_s:g} s wall-clock timeout"
        elif self.reason == "cancelled":
            r.status, r.detail = Status.SANDBOX_ERROR, "the call was cancelled; the sandbox was killed"
        elif exit_code == 0:
            r.status = Status.OK
        elif memory_error and (st is None or st.memory_failcnt > 0 or self.sb.mode == "rlimits"):
            r.status, r.detail = Status.MEMORY_LIMIT, f"MemoryError at the {lim.memory_limit_mb} MiB memory cap"
        elif exit_code is None and sig is not None:
            r.status, r.detail = Status.RUNTIME_ERROR, f"killed by signal {sig}"
        elif exit_code == 1 and stderr.startswith("bwrap:"):
            r.status, r.detail = Status.SANDBOX_ERROR, stderr.strip()[:500]
        else:
            r.status = Status.RUNTIME_ERROR
        r.extra["killed_reason"] = self.reason
        # Whether the call ran long enough on the CPU to be demoted below its neighbours.
        r.extra["cpu_demoted"] = sp.governor is not None and sp.governor.demotions > 0
        return r


class BwrapWorker(WorkerProcess):
    """A bwrap sandbox running the session worker, reached over pipes."""

    def __init__(self, sp: Spawned, in_w: int, out_r: int, err_r: int):
        self.sp = sp
        self.in_w, self.out_r, self.err_r = in_w, out_r, err_r
        self.loop = asyncio.get_running_loop()
        for fd in (in_w, out_r, err_r):
            os.set_blocking(fd, False)
        self.diag = bytearray()
        self.loop.add_reader(err_r, self._on_diag)
        self.dead = False

    def _on_diag(self) -> None:
        try:
            chunk = os.read(self.err_r, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.loop.remove_reader(self.err_r)
            return
        if len(self.diag) < 1 << 16:
            self.diag += chunk[: (1 << 16) - len(self.diag)]

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.in_w, view):]
            except BlockingIOError:
                fut = self.loop.create_future()
                self.loop.add_writer(self.in_w, lambda: fut.done() or fut.set_result(None))
                try:
                    await fut
                finally:
                    self.loop.remove_writer(self.in_w)
            except (BrokenPipeError, OSError) as e:
                raise WorkerDied(f"cannot write to the worker: {e}") from None

    async def read(self) -> bytes:
        while True:
            try:
                return os.read(self.out_r, 1 << 20)
            except BlockingIOError:
                pass
            except OSError:
                return b""
            fut = self.loop.create_future()
            self.loop.add_reader(self.out_r, lambda: fut.done() or fut.set_result(None))
            try:
                # Plain futures: asyncio.wait detaches its callbacks afterwards, so a long
                # session does not accumulate one pending wrapper per read.
                await asyncio.wait([fut, self.sp.exited], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.loop.remove_reader(self.out_r)
            if not fut.done():
                # bwrap exited; whatever is left in the pipe is still readable.
                try:
                    return os.read(self.out_r, 1 << 20)
                except (BlockingIOError, OSError):
                    return b""

    async def kill(self) -> None:
        if self.dead:
            return
        self.dead = True
        self.sp.kill()
        await self.sp.reap()
        for fd in (self.in_w, self.out_r, self.err_r):
            try:
                self.loop.remove_reader(fd)
                self.loop.remove_writer(fd)
                os.close(fd)
            except OSError:
                pass

    async def post_mortem(self) -> tuple[Status, str]:
        st = self.sp.stats
        rc = self.sp.returncode
        diag = self.diag.decode("utf-8", "replace").strip()[-300:]
        if st is not None and st.oom_kills > 0:
            return Status.MEMORY_LIMIT, "OOM killed at the session's memory cap"
        if st is not None and st.pids_max_hits > 0:
            return Status.RESOURCE_LIMIT, "hit the session's process/thread cap"
        exit_code, sig = _status_from_rc(rc if rc is not None else -9)
        how = f"signal {sig}" if sig is not None else f"exit code {exit_code}"
        return Status.SANDBOX_ERROR, f"worker ended with {how}" + (f": {diag}" if diag else "")

    def cpu_time_s(self) -> float | None:
        return None
