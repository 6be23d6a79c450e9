"""Per-call cgroups (v1) for the bwrap backend: memory, pids and CPU caps and weights, kill,
accounting.

Layout: one directory per sandbox instance under the cgroup this process already belongs to
in each hierarchy (``<mount>/<own path>/agentrl-<pid>-<n>``), and one child per call or
session (``.../c<k>``). Each call's child gets ``memory.limit_in_bytes`` (and
``memory.memsw.limit_in_bytes`` when swap accounting exists), ``pids.max`` and
``cpu.cfs_quota_us``; ``cpuacct`` gives CPU time, ``freezer`` stops a fork bomb while it is
being killed. CPU weights: the root's ``cpu.shares`` (:data:`ROOT_CPU_SHARES`) sets all
sandboxes against the trainer, and :class:`CpuGovernor` demotes a call that has run long on
the CPU below the others. A process joins by writing ``0`` (itself) to ``cgroup.procs``
before it execs bubblewrap, so every sandboxed process is inside from its first instruction.

What it covers: memory of all processes of the call including tmpfs/shm pages they write and
kernel memory the kernel charges to the cgroup; processes *and threads* (pids); CPU bandwidth.
After a call the cgroup's counters tell OOM kills (``memory.oom_control: oom_kill``), hits of
the pids cap (``pids.events: max``), peak memory and CPU time.

Stale roots. A supervisor killed with SIGKILL (an OOM-killed or preempted trainer) skips every
finalizer and leaves its root with the children of the calls that were running. The bwrap
backend writes a record of its roots (:data:`RECORD`: full paths, owner pid, start time, pid
namespace) into its host temp folder; the next backend to start, in any cgroup, reads the
records of dead owners and removes their roots (:func:`clean_recorded`), then any unrecorded
dead root directly under its own cgroups (:func:`clean_stale`). Children are found in every
hierarchy, tasks left in them are killed, and what was removed is counted (:class:`Cleaned`).

What it does not: cgroup v2 (unified) hierarchies are not driven by this module; when the v1
controllers are missing or not writable (a non-root laptop, a v2-only host) :func:`probe`
says why and the backend falls back to rlimits plus the pid namespace (see ``bwrap.py``).
Disk I/O bandwidth is not limited. Standard library only.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MOUNT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
#: Name of the record a backend writes in its host temp folder: which cgroup roots it made and
#: who made them, so a later backend finds them wherever they are (see :func:`clean_stale`).
RECORD = "cgroups.json"
_ROOT_NAME = re.compile(r"agentrl-(\d+)-(\d+)")
_counter = itertools.count()

# CPU weights (cgroup v1 cpu.shares; a nice-0 task or an autogroup weighs 1024).
#: All sandboxes of one backend together, against the trainer: its root's weight beside the
#: trainer's threads (or its autogroup) in the trainer's own cgroup. A quarter of one nice-0
#: thread: a CPU hog in a sandbox takes a fifth of a CPU a trainer thread also wants (a third
#: where the trainer is one autogroup spread over two CPUs) instead of half.
ROOT_CPU_SHARES = 256
#: One call (or session) among its siblings: every call starts at the default weight...
CALL_CPU_SHARES = 1024
#: ...and drops to this once it has run long on the CPU (see :class:`CpuGovernor`), so a
#: spinner does not halve the share of a short run started beside it in another sandbox.
HOG_CPU_SHARES = 32
USE_CPU_IDLE = True


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


@dataclass
class Cleaned:
    """What :func:`clean_stale` removed: cgroup roots of dead supervisors (one entry per root,
    its directory in the first hierarchy), cgroup directories in all (roots and their
    children), processes killed, and directories that would not go (retried next start)."""

    roots: list[str] = field(default_factory=list)
    dirs: int = 0
    tasks_killed: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"cgroup_roots": len(self.roots), "cgroup_dirs": self.dirs, "tasks_killed": self.tasks_killed,
                "cgroup_dirs_left": len(self.failed), "roots": list(self.roots)}


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if
    there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def owner_record(root: CgroupRoot) -> dict[str, object]:
    """The record of ``root`` (for :data:`RECORD`): its directories and its owner, identified
    by pid, start time (a reused pid is not the owner) and pid namespace (a pid from another
    namespace cannot be checked here)."""
    return {"pid": os.getpid(), "start": _start_time(os.getpid()), "pid_ns": _pid_ns(), "dirs": dict(root.dirs)}


def owner_dead(record: dict) -> bool | None:
    """True when the record's owner is gone (no such pid, or the pid now belongs to a process
    started at another time), False while it runs, None when this process cannot tell (the
    record comes from another pid namespace, or is malformed)."""
    pid, start = record.get("pid"), record.get("start")
    if not isinstance(pid, int) or record.get("pid_ns") != _pid_ns():
        return None
    now = _start_time(pid)
    return now is None or (isinstance(start, int) and now != start)


def _valid_root_dirs(record: dict) -> dict[str, str] | None:
    """The record's directories when every one is an ``agentrl-<owner pid>-<n>`` directory
    under the cgroup mount (a record names nothing else, whoever wrote it)."""
    dirs = record.get("dirs")
    if not isinstance(dirs, dict) or not dirs:
        return None
    mount = os.path.realpath(MOUNT) + "/"
    for c, d in dirs.items():
        if c not in CONTROLLERS or not isinstance(d, str) or ".." in d.split("/"):
            return None
        m = _ROOT_NAME.fullmatch(os.path.basename(d))
        if m is None or int(m.group(1)) != record.get("pid") or not os.path.realpath(d).startswith(mount):
            return None
    return dirs


def clean_recorded(record_path: str, cleaned: Cleaned, pid: int) -> bool | None:
    """Remove the cgroup roots named by a backend's record (made by process ``pid``) when
    their owner is dead, wherever the owner's cgroups were: the record has their full paths.
    Returns whether the owner is dead (:func:`owner_dead`; for an unreadable record, whether
    ``pid`` is gone); False or None: nothing was touched."""
    try:
        with open(record_path) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("pid") != pid:
        return _start_time(pid) is None  # torn or foreign: nothing it names is trusted
    dead = owner_dead(record)
    dirs = _valid_root_dirs(record)
    if dead and dirs is not None:
        _remove_root(CgroupRoot(dirs), cleaned)
    return dead


def clean_stale(cleaned: Cleaned | None = None) -> Cleaned:
    """Remove what supervisors that died without cleaning up (SIGKILL skips every finalizer)
    left directly under this process's own cgroup in each hierarchy: any
    ``agentrl-<pid>-<n>`` root of a dead pid (roots without a record, see
    :func:`clean_recorded`: older versions, another temp dir). Each root goes with all its
    children in *every* hierarchy (a child left in one hierarchy only, after an interrupted
    removal, no longer keeps its root alive); leftover tasks are killed first."""
    cleaned = Cleaned() if cleaned is None else cleaned
    try:
        own = _own_paths()
    except OSError:
        return cleaned
    parents = {}
    for c in CONTROLLERS:
        mount = _mount_dir(c)
        if mount is not None and c in own:
            parents[c] = mount + own[c].rstrip("/")
    names: set[str] = set()
    for d in dict.fromkeys(parents.values()):
        try:
            names.update(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False) and _ROOT_NAME.fullmatch(e.name))
        except OSError:
            continue
    for name in sorted(names):
        pid = int(_ROOT_NAME.fullmatch(name).group(1))
        if _start_time(pid) is None:
            _remove_root(CgroupRoot({c: os.path.join(d, name) for c, d in parents.items()}), cleaned)
    return cleaned


def _remove_root(root: CgroupRoot, cleaned: Cleaned) -> None:
    existing = [d for d in dict.fromkeys(root.dirs.values()) if os.path.isdir(d)]
    if not existing:
        return
    dirs, killed, left = root.remove()
    cleaned.roots.append(existing[0])
    cleaned.dirs += dirs
    cleaned.tasks_killed += killed
    cleaned.failed += left


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
        self.cpu_shares = CALL_CPU_SHARES  # the weight of all its calls together (set_cpu_shares)

    def set_cpu_shares(self, shares: int) -> None:
        """The weight of all this root's sandboxes together against the rest of the parent
        cgroup (the trainer): ``cpu.shares`` of the root's cpu directory."""
        _write(os.path.join(self.dirs["cpu"], "cpu.shares"), str(int(shares)))
        self.cpu_shares = int(shares)

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

    def remove(self) -> tuple[int, int, list[str]]:
        """Kill and remove every call cgroup, then the sandbox's own directories. Children are
        listed in every hierarchy (one whose removal was interrupted may be left in some
        only), and any deeper directory goes too. Returns (directories removed, tasks killed,
        directories that stayed)."""
        names: set[str] = set()
        for d in dict.fromkeys(self.dirs.values()):
            try:
                names.update(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
            except OSError:
                pass
        removed = killed = 0
        left: list[str] = []
        for name in sorted(names):
            cg = CallCgroup({c: os.path.join(d, name) for c, d in self.dirs.items()})
            present = [p for p in dict.fromkeys(cg.paths.values()) if os.path.isdir(p)]
            for p in present:
                _remove_below(p)
            for _ in range(100):  # up to ~2 s for busy directories (see CallCgroup.remove)
                if cg.remove(attempts=10):
                    break
            else:
                log.warning("could not remove cgroup %s", cg.paths)
            killed += cg.killed
            for p in present:
                if os.path.isdir(p):
                    left.append(p)
                else:
                    removed += 1
        self.pending.clear()
        self.stock.clear()
        for d in dict.fromkeys(self.dirs.values()):
            for attempt in range(50):  # EBUSY for a moment while the last tasks are reaped
                try:
                    os.rmdir(d)
                    removed += 1
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if attempt == 49:
                        log.debug("could not remove cgroup %s: %s", d, e)
                        left.append(d)
                    else:
                        time.sleep(0.002)
        return removed, killed, left


class CallCgroup:
    """One call's (or one session's) cgroup in every hierarchy."""

    def __init__(self, paths: dict[str, str], on_remove=None):
        self.paths = paths
        self._on_remove = on_remove
        self._procs = list(dict.fromkeys(os.path.join(p, "cgroup.procs") for p in paths.values()))
        self.killed = 0  # tasks this object SIGKILLed
        self.cpu_shares = CALL_CPU_SHARES  # what cpu.shares holds (a new cgroup's default)
        self.cpu_idle = False

    def cpu_usage_s(self) -> float | None:
        """CPU seconds used so far by every task of the call (``cpuacct.usage``)."""
        try:
            return int(_read(os.path.join(self.paths["cpuacct"], "cpuacct.usage"))) / 1e9
        except (OSError, ValueError, KeyError):
            return None

    def set_cpu_shares(self, shares: int) -> None:
        if shares != self.cpu_shares:
            try:
                _write(os.path.join(self.paths["cpu"], "cpu.shares"), str(int(shares)))
                self.cpu_shares = int(shares)
            except OSError as e:  # the call is ending and its directory going
                log.debug("could not set cpu.shares of %s: %s", self.paths.get("cpu"), e)

    def runnable(self, limit: int = 32) -> bool:
        """Whether any of the call's threads (the first ``limit``) is running or waiting for a
        CPU (state R)."""
        try:
            tids = _read(os.path.join(self.paths["cpu"], "tasks")).split()[:limit]
        except (OSError, KeyError):
            return False
        for tid in tids:
            try:
                with open(f"/proc/{tid}/stat", "rb") as fh:
                    if fh.read().rsplit(b")", 1)[1].split()[0] == b"R":
                        return True
            except (OSError, IndexError):
                continue
        return False

    def set_cpu_idle(self, idle: bool) -> bool:
        """``cpu.idle`` (Linux 5.15+): the call's tasks schedule like SCHED_IDLE against their
        siblings (any non-idle sibling preempts them at once) and a CPU running only them
        counts as idle when a waking task looks for a CPU. False where the kernel lacks it."""
        if idle == self.cpu_idle:
            return True
        try:
            _write(os.path.join(self.paths["cpu"], "cpu.idle"), "1" if idle else "0")
        except FileNotFoundError:
            return False
        except OSError as e:
            log.debug("could not set cpu.idle of %s: %s", self.paths.get("cpu"), e)
            return False
        self.cpu_idle = idle
        return True

    @property
    def procs_files(self) -> list[str]:
        """Every ``cgroup.procs`` file; a process joins by writing ``0`` (itself) to each."""
        return list(self._procs)

    def pids(self) -> list[int]:
        """Tasks of this call: those of its first hierarchy's directory, or of any hierarchy
        when that one is gone (a partly removed call cgroup)."""
        for procs in self._procs:
            try:
                return [int(x) for x in _read(procs).split()]
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                return []
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
                    self.killed += 1
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


def _remove_below(path: str) -> None:
    """rmdir every directory below ``path``, deepest first (a call cgroup has none unless
    someone made them: the sandbox user cannot, but they must not pin the call's directory)."""
    try:
        subdirs = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for d in subdirs:
        _remove_below(d)
        for pid in _read_pids(d):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(d)
        except OSError as e:
            log.debug("could not remove cgroup %s: %s", d, e)


def _read_pids(d: str) -> list[int]:
    try:
        return [int(x) for x in _read(os.path.join(d, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


class CpuGovernor:
    """Demotes a call that has run long on the CPU below its siblings, and restores it when the
    call stops wanting the CPU: least-attained-service first among one backend's sandboxes.

    Sibling calls share their root's weight by their own weights. At equal weights a spinner
    halves what a short run started beside it gets whenever the two compete (the same CPU, or
    the root's share of a CPU the trainer or other work also wants), and a CPU it spins on is
    never idle, so the short run's processes wake up on a busy one: 2-5x slower in the
    issue's measurement. Every :attr:`period_s` the call's CPU time is read; once it has used
    :attr:`demote_after_s` CPU seconds since it last stopped wanting the CPU, it is demoted:
    ``cpu.idle`` (SCHED_IDLE against its siblings: any other call preempts it at once, and a
    CPU running only demoted calls counts as idle for a waking task), or on kernels without
    it ``cpu.shares`` :data:`HOG_CPU_SHARES`. It is restored (and its count starts again)
    after a period in which it used less than :attr:`idle_below_s` with none of its threads
    runnable: a session between execs. A spinner that the machine or its neighbours starve is
    still runnable, so it keeps counting and stays demoted.
    Attained CPU decides, not wall time: a short run starved by a loaded machine is not
    demoted. A run needing under ~0.1 s of CPU is never demoted, and a demoted one still gets
    every cycle no one else wants. Driven by the caller's clock (``tick``): no thread.
    """

    period_s = 0.1
    demote_after_s = 0.1
    idle_below_s = 0.002

    def __init__(self, cg: CallCgroup):
        self.cg = cg
        self.last = cg.cpu_usage_s() or 0.0
        self.attained = 0.0  # CPU seconds since the call last stopped wanting the CPU
        self.demotions = 0
        self.demoted = False

    def tick(self) -> None:
        now = self.cg.cpu_usage_s()
        if now is None:
            return
        used, self.last = now - self.last, now
        if used < self.idle_below_s and not (self.attained and self.cg.runnable()):
            self.attained = 0.0
        else:
            self.attained += used
        hog = self.attained >= self.demote_after_s
        if hog == self.demoted:
            return
        self.demoted = hog
        self.demotions += hog
        if not (USE_CPU_IDLE and self.cg.set_cpu_idle(hog)):
            self.cg.set_cpu_shares(HOG_CPU_SHARES if hog else CALL_CPU_SHARES)
