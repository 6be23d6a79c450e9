"""Per-call cgroups (v1) for the bwrap backend: memory, pids and CPU caps, kill, accounting.

Layout: one directory per sandbox instance under the cgroup this process already belongs to
in each hierarchy (``<mount>/<own path>/agentrl-<pid>-<n>``), and one child per call or
session (``.../c<k>``). Each call's child gets ``memory.limit_in_bytes`` (and
``memory.memsw.limit_in_bytes`` when swap accounting exists), ``pids.max`` and
``cpu.cfs_quota_us``; ``cpuacct`` gives CPU time, ``freezer`` stops a fork bomb while it is
being killed. A process joins by writing ``0`` (itself) to ``cgroup.procs`` before it execs
bubblewrap, so every sandboxed process is inside from its first instruction.

What it covers: memory of all processes of the call including tmpfs/shm pages they write and
kernel memory the kernel charges to the cgroup; processes *and threads* (pids); CPU bandwidth.
After a call the cgroup's counters tell OOM kills (``memory.oom_control: oom_kill``), hits of
the pids cap (``pids.events: max``), peak memory and CPU time.

What it does not: cgroup v2 (unified) hierarchies are not driven by this module; when the v1
controllers are missing or not writable (a non-root laptop, a v2-only host) :func:`probe`
says why and the backend falls back to rlimits plus the pid namespace (see ``bwrap.py``).
Disk I/O bandwidth is not limited. Standard library only.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

MOUNT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
_counter = itertools.count()


def _own_paths() -> dict[str, str]:
    """{controller: path of this process's cgroup in that v1 hierarchy}."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(","):
                if c:
                    out[c] = path
    return out


def _mount_dir(controller: str) -> str | None:
    """Where a v1 controller is mounted (``/sys/fs/cgroup/cpu`` or ``.../cpu,cpuacct``)."""
    for name in (controller, "cpu,cpuacct", "cpuacct,cpu"):
        d = os.path.join(MOUNT, name)
        if controller in name.split(",") and os.path.isfile(os.path.join(d, "cgroup.procs")):
            return os.path.realpath(d)
    return None


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def probe() -> tuple[CgroupRoot | None, str]:
    """Try to set up a v1 cgroup root for this process; returns (root or None, reason)."""
    if os.geteuid() != 0:
        return None, "not running as root: cgroup v1 directories are not writable"
    try:
        own = _own_paths()
    except OSError as e:
        return None, f"cannot read /proc/self/cgroup: {e}"
    dirs: dict[str, str] = {}
    for c in CONTROLLERS:
        mount = _mount_dir(c)
        if mount is None or c not in own:
            return None, f"cgroup v1 controller {c!r} is not mounted under {MOUNT} (cgroup v2 host?)"
        dirs[c] = mount + own[c].rstrip("/")
    for d in dict.fromkeys(dirs.values()):
        _remove_stale(d, dirs)
    name = f"agentrl-{os.getpid()}-{next(_counter)}"
    made: list[str] = []
    try:
        for c, d in dirs.items():
            path = os.path.join(d, name)
            if path in made:  # cpu and cpuacct co-mounted
                continue
            os.mkdir(path, 0o755)
            made.append(path)
    except OSError as e:
        for p in reversed(made):
            try:
                os.rmdir(p)
            except OSError:
                pass
        return None, f"cannot create a cgroup under {dirs}: {e}"
    root = CgroupRoot({c: os.path.join(d, name) for c, d in dirs.items()})
    root.memsw = os.path.exists(os.path.join(root.dirs["memory"], "memory.memsw.limit_in_bytes"))
    return root, "cgroup v1: memory, pids, cpu, cpuacct, freezer"


def _remove_stale(parent: str, dirs: dict[str, str]) -> None:
    """Remove ``agentrl-<pid>-<n>`` roots left by supervisors that died without cleaning up."""
    try:
        names = [e.name for e in os.scandir(parent) if e.is_dir() and e.name.startswith("agentrl-")]
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or not parts[1].isdigit() or os.path.exists(f"/proc/{parts[1]}"):
            continue
        CgroupRoot({c: os.path.join(d, name) for c, d in dirs.items()}).remove()


@dataclass
class CgroupStats:
    oom_kills: int = 0
    memory_failcnt: int = 0
    peak_memory_bytes: int = 0
    pids_max_hits: int = 0
    cpu_time_s: float = 0.0


class CgroupRoot:
    """The per-sandbox parent directory in each hierarchy; makes one :class:`CallCgroup` per call."""

    def __init__(self, dirs: dict[str, str]):
        self.dirs = dirs
        self.memsw = False
        self._n = itertools.count()
        self.live: set[str] = set()  # names of call cgroups not yet removed
        self.pending: list[CallCgroup] = []  # ended calls whose directories were still busy
        self.stock: dict[tuple[int, int, float], list[CallCgroup]] = {}  # made ahead of use

    def create(self, *, memory_bytes: int, max_pids: int, cpus: float) -> CallCgroup:
        """A fresh call cgroup with these caps: taken from the stock made by :meth:`prepare`
        when one matches, else made now (5 mkdirs and 6 writes)."""
        key = (memory_bytes, max_pids, cpus)
        stock = self.stock.get(key)
        if stock:
            return stock.pop()
        return self._make(key)

    def prepare(self, *, memory_bytes: int, max_pids: int, cpus: float, keep: int = 2) -> None:
        """Make call cgroups ahead of time (off the latency path) for these caps."""
        key = (memory_bytes, max_pids, cpus)
        if key not in self.stock and len(self.stock) >= 4:  # only the few limit sets in use
            return
        stock = self.stock.setdefault(key, [])
        while len(stock) < keep:
            stock.append(self._make(key))

    def _make(self, key: tuple[int, int, float]) -> CallCgroup:
        memory_bytes, max_pids, cpus = key
        if self.pending:
            self.retry_pending()
        name = f"c{next(self._n)}"
        paths = {c: os.path.join(d, name) for c, d in self.dirs.items()}
        made: list[str] = []
        try:
            for p in paths.values():
                if p not in made:
                    os.mkdir(p, 0o755)
                    made.append(p)
            mem = paths["memory"]
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
            if self.memsw:
                _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(memory_bytes))
            _write(os.path.join(mem, "memory.swappiness"), "0")
            _write(os.path.join(paths["pids"], "pids.max"), str(max_pids))
            period = 100_000
            _write(os.path.join(paths["cpu"], "cpu.cfs_period_us"), str(period))
            _write(os.path.join(paths["cpu"], "cpu.cfs_quota_us"), str(max(1000, int(cpus * period))))
        except OSError:
            for p in reversed(made):
                try:
                    os.rmdir(p)
                except OSError:
                    pass
            raise
        self.live.add(name)
        return CallCgroup(paths, on_remove=self._removed)

    def _removed(self, cg: CallCgroup, ok: bool) -> None:
        self.live.discard(os.path.basename(cg.paths["pids"]))
        if not ok:
            self.pending.append(cg)

    def retry_pending(self) -> None:
        """Try again to remove call cgroups that were busy when their call ended."""
        pending, self.pending = self.pending, []
        for cg in pending:
            cg._on_remove = None
            if not cg.remove(attempts=1):
                self.pending.append(cg)

    def leftover_tasks(self) -> int:
        """Processes in this sandbox's cgroups that belong to no live call or session: tasks
        left in the parent directory or in call cgroups already given up (0 when clean)."""
        total = 0
        d = self.dirs["pids"]
        try:
            total += len(_read(os.path.join(d, "cgroup.procs")).split())
            for entry in os.scandir(d):
                if entry.is_dir() and entry.name not in self.live:
                    total += len(_read(os.path.join(entry.path, "cgroup.procs")).split())
        except OSError:
            pass
        return total

    def live_tasks(self) -> int:
        """Processes in live call/session cgroups (running sandboxes)."""
        total = 0
        for name in list(self.live):
            try:
                total += len(_read(os.path.join(self.dirs["pids"], name, "cgroup.procs")).split())
            except OSError:
                pass
        return total

    def remove(self) -> None:
        """Kill and remove every call cgroup, then the sandbox's own directories."""
        try:
            names = [e.name for e in os.scandir(self.dirs["pids"]) if e.is_dir()]
        except OSError:
            names = []
        for name in names:
            cg = CallCgroup({c: os.path.join(d, name) for c, d in self.dirs.items()})
            for _ in range(100):  # up to ~2 s for busy directories (see CallCgroup.remove)
                if cg.remove(attempts=10):
                    break
            else:
                log.warning("could not remove cgroup %s", cg.paths)
        self.pending.clear()
        self.stock.clear()
        for d in dict.fromkeys(self.dirs.values()):
            try:
                os.rmdir(d)
            except OSError as e:
                log.debug("could not remove cgroup %s: %s", d, e)


class CallCgroup:
    """One call's (or one session's) cgroup in every hierarchy."""

    def __init__(self, paths: dict[str, str], on_remove=None):
        self.paths = paths
        self._on_remove = on_remove
        self._procs = list(dict.fromkeys(os.path.join(p, "cgroup.procs") for p in paths.values()))

    @property
    def procs_files(self) -> list[str]:
        """Every ``cgroup.procs`` file; a process joins by writing ``0`` (itself) to each."""
        return list(self._procs)

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in _read(self._procs[0]).split()]
        except (OSError, ValueError):
            return []

    def stats(self) -> CgroupStats:
        s = CgroupStats()
        mem = self.paths.get("memory")
        try:
            for line in _read(os.path.join(mem, "memory.oom_control")).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    s.oom_kills = int(value)
            s.memory_failcnt = int(_read(os.path.join(mem, "memory.failcnt")))
            s.peak_memory_bytes = int(_read(os.path.join(mem, "memory.max_usage_in_bytes")))
        except (OSError, ValueError, TypeError):
            pass
        try:
            for line in _read(os.path.join(self.paths["pids"], "pids.events")).splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    s.pids_max_hits = int(value)
        except (OSError, ValueError, KeyError):
            pass
        try:
            s.cpu_time_s = int(_read(os.path.join(self.paths["cpuacct"], "cpuacct.usage"))) / 1e9
        except (OSError, ValueError, KeyError):
            pass
        return s

    def kill_all(self, *, rounds: int = 50, exclude: tuple[int, ...] = ()) -> int:
        """Freeze, SIGKILL every task (but ``exclude``), thaw; repeat until only excluded
        tasks remain. Returns how many other tasks are left (0 = done)."""
        freezer = os.path.join(self.paths["freezer"], "freezer.state")
        left = [p for p in self.pids() if p not in exclude]
        for _ in range(rounds):
            if not left:
                return 0
            try:
                _write(freezer, "FROZEN")
            except OSError:
                pass
            for pid in self.pids():
                if pid in exclude:
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                _write(freezer, "THAWED")
            except OSError:
                pass
            left = [p for p in self.pids() if p not in exclude]
            if left:
                time.sleep(0.001)
        return len(left)

    def remove(self, *, attempts: int = 3) -> bool:
        """Kill leftovers, then rmdir in every hierarchy. False if a directory stays: the
        kernel may report EBUSY for a moment after the last task is reaped (a pids or memory
        cgroup whose exiting tasks are still freeing a large tmpfs); the owner retries later
        (:meth:`CgroupRoot.retry_pending`) instead of blocking the event loop."""
        ok = not self.kill_all()
        for p in dict.fromkeys(self.paths.values()):
            for attempt in range(attempts):
                try:
                    os.rmdir(p)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if attempt == attempts - 1:
                        log.debug("cgroup %s not removable yet: %s", p, e)
                        ok = False
                    else:
                        time.sleep(0.002)
        if self._on_remove is not None:
            self._on_remove(self, ok)
        return ok
