"""The adversarial suite: 29 attacks in 21 numbered groups against any backend.

Each :class:`Attack` is data: a program (or a short scripted scenario), the limits it runs
under, the statuses that count as contained, and checks on the result. The programs are files
of ``sandboxes/attacks/`` (one per attack, named after it; the reward-hacking cheats in
``attacks/cheats/``), read as text by :func:`program` and installed as package data. After every attack the
*host* is checked too (:class:`HostWatch`):

- no process anywhere on the host carries the attack's tag (every attack program re-execs
  itself with ``agentrl-attack-<nonce>`` in its argv, so forks, daemons and bombs are
  findable by ``/proc/*/cmdline``), and this process has no more descendants than before (±2);
- the backend holds no leftover tasks (``sandbox.leftover_tasks()`` when it has one:
  cgroup tasks for bwrap, stray exec processes for docker);
- marker paths the attacks try to create on the host never appear;
- protected host files (``/etc/hosts``, ``/etc/passwd``, ``/bin/bash``, the system Python's
  ``os.py``) keep their size, mtime and inode, and no ``sitecustomize.py`` appears;
- host ``/dev/shm`` (and ``/tmp`` when it is its own tmpfs) usage did not grow by more than
  256 MiB and the root file system did not lose more than 1 GiB (other work on the machine
  makes small changes; an escaped 4 GB fill would not fit in these bounds).

:func:`run_suite` returns one :class:`Row` per attack: ``(attack, status, wall_time_s,
passed, detail)``. ``tests/sandboxes`` and ``agentrl sandbox selftest`` both use it, so every
backend faces exactly the same programs. Attack programs never modify host files even when a
broken sandbox would let them: tamper attempts open files for writing without writing and
remove anything they manage to create. Standard library only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from .base import Sandbox
from .types import ExecResult, Limits, Status, UnsafePathError

#: The attack programs, one file each (package data, see pyproject.toml): read as text and run
#: inside the sandbox; ``@NONCE@``, ``@TAG@`` and the placeholders named in each file's first
#: line are substituted before a run.
ATTACKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attacks")


#: Every program read so far, by name (all of them once this module is imported).
PROGRAMS: dict[str, str] = {}


def program(name: str) -> str:
    """The source of attack program ``name`` (a path relative to :data:`ATTACKS_DIR`)."""
    if name not in PROGRAMS:
        path = os.path.join(ATTACKS_DIR, name)
        try:
            with open(path, encoding="utf-8") as fh:
                PROGRAMS[name] = fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"attack program {path} is missing: agentrl.sandboxes was installed without its attacks/ "
                "data files (pyproject.toml [tool.setuptools.package-data]); reinstall with pip install ."
            ) from None
    return PROGRAMS[name]

T = 2.0  # wall timeout (s) of the time-based attacks
GRACE_S = 1.0  # "returned within T + 1 s": docs/sandboxes.md, threat model
ALLOWED_ENV = {
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM",
    "HOSTNAME", "PWD", "OLDPWD", "SHLVL", "_", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
    "PYTHONIOENCODING",
}
S = Status


@dataclass
class Row:
    attack: str
    status: str
    wall_time_s: float
    passed: bool
    detail: str
    number: int = 0

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class Ctx:
    """What one attack run knows: its nonce/tag, host-side canaries, the sandbox's limits."""

    sandbox: Sandbox
    nonce: str
    scratch: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"agentrl-attack-{self.nonce}"

    def fail(self, msg: str) -> None:
        self.problems.append(msg)

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    def host_markers(self) -> list[str]:
        name = f"agentrl-marker-{self.nonce}"
        return [os.path.join(d, name) for d in ("/tmp", "/dev/shm", "/var/tmp", self.scratch)]

    def sub(self, code: str) -> str:
        return code.replace("@NONCE@", self.nonce).replace("@TAG@", self.tag)

    def tagged(self, code: str, language: str = "python") -> str:
        """Wrap ``code`` so its process (and every fork) carries the tag in its argv."""
        code = self.sub(code)
        if language == "python":
            return (
                "import os, sys\n"
                f"os.execv(sys.executable, [sys.executable, '-I', '-S', '-c', {code!r}, {self.tag!r}])\n"
            )
        return f"exec bash -c {_sh_quote(code)} {self.tag}\n"

    async def run(self, code: str, *, language: str = "python", stdin: bytes | None = None,
                  files: dict | None = None, **limits: object) -> ExecResult:
        lim = self.sandbox.limits.replace(**limits) if limits else self.sandbox.limits
        return await self.sandbox.run(self.tagged(code, language), language=language, stdin=stdin,
                                      files=files, limits=lim)


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


Scenario = Callable[[Ctx], Awaitable[ExecResult]]


@dataclass(frozen=True)
class Attack:
    """One adversarial scenario.

    ``scenario`` runs the program(s) and returns the main result; it records failed
    expectations with ``ctx.fail``. ``expect`` is the set of statuses that count as contained;
    ``max_wall_s`` bounds the main result's wall time (None: no bound).
    """

    name: str
    number: int
    title: str
    scenario: Scenario
    expect: frozenset[Status]
    max_wall_s: float | None = None
    settle_s: float = 0.0  # wait this long before the host checks (daemons that sleep)


def simple(name: str, number: int, title: str, code: str, expect: Iterable[Status], *,
           language: str = "python", max_wall_s: float | None = None,
           check: Callable[[ExecResult, Ctx], None] | None = None, settle_s: float = 0.0,
           **limits: object) -> Attack:
    """An attack that is one tagged program under ``limits`` plus an optional result check."""

    async def scenario(ctx: Ctx) -> ExecResult:
        r = await ctx.run(code, language=language, **limits)
        if check is not None:
            check(r, ctx)
        return r

    return Attack(name, number, title, scenario, frozenset(expect), max_wall_s, settle_s)


def _json_tail(r: ExecResult) -> dict:
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {}


# =============================================================================================
# Result checks shared by several attacks.


def _cpu_reported(r: ExecResult, ctx: Ctx) -> None:
    if r.cpu_time_s <= 0.05:
        ctx.fail(f"expected the spinner's CPU time to be reported, got cpu_time_s={r.cpu_time_s:.3f}")


def _json_check(key: str, pred: Callable[[object], bool], what: str) -> Callable[[ExecResult, Ctx], None]:
    def check(r: ExecResult, ctx: Ctx) -> None:
        report = _json_tail(r)
        value = report.get(key)
        if not pred(value):
            ctx.fail(f"{what}; got {key}={value!r} (stdout tail {r.stdout[-200:]!r}, stderr tail {r.stderr[-200:]!r})")
        else:
            ctx.note(f"{key}={value}")

    return check


_FILL = program("fill.py")

_NET = program("network_egress.py")

_IPC = program("local_ipc.py")

_PRIV = program("privilege_escalation.py")


def _priv_check(r: ExecResult, ctx: Ctx) -> None:
    report = _json_tail(r)
    if not report:
        ctx.fail(f"no report from the program (stderr tail {r.stderr[-300:]!r})")
        return
    allowed = [k for k, v in report.items() if v == "ALLOWED"]
    if allowed:
        ctx.fail(f"allowed: {allowed}")
    if report.get("euid") == 0 and report.get("uid") != 0:
        ctx.fail("effective uid 0 reached")
    if report.get("NoNewPrivs") != "1":
        ctx.fail(f"no_new_privs is not set (NoNewPrivs={report.get('NoNewPrivs')!r}): setuid binaries can elevate")
    denied = {k: v for k, v in report.items() if k not in ("uid", "euid", "NoNewPrivs")}
    ctx.note("denied: " + ", ".join(f"{k}={v}" for k, v in denied.items()))


def _net_check(r: ExecResult, ctx: Ctx) -> None:
    report = _json_tail(r)
    if not report:
        ctx.fail(f"no report from the program (stderr tail {r.stderr[-300:]!r})")
        return
    for target, (res, elapsed) in report.items():
        if res in ("CONNECTED", "RESOLVED"):
            ctx.fail(f"{target} reachable")
        elif elapsed >= 1.0:
            ctx.fail(f"{target} took {elapsed:.2f} s to fail (must fail in under 1 s)")
    ctx.note(", ".join(f"{t}={v[0]} in {v[1]:.3f}s" for t, v in report.items()))


def _ipc_check(r: ExecResult, ctx: Ctx) -> None:
    report = _json_tail(r)
    if not report:
        ctx.fail(f"no report from the program (stderr tail {r.stderr[-300:]!r})")
        return
    bad = [k for k, v in report.items() if v in ("CONNECTED", "OK", "OPENED")]
    if bad:
        ctx.fail(f"reachable: {bad}")
    ctx.note(", ".join(f"{k}={v}" for k, v in report.items()))


# =============================================================================================
# Scenarios with more than one program, or host-side parts.

_BENIGN = "print(sum(range(200000)))"
_MEMORY_BOMB = program("memory_bomb.py")
_CPU_SPIN = program("cpu_spin.py")


async def _memory_bomb(ctx: Ctx) -> ExecResult:
    results = await asyncio.gather(ctx.run(_MEMORY_BOMB, timeout_s=10.0), ctx.run(_BENIGN))
    bomb_r, benign = results
    if not (benign.ok and benign.stdout.strip() == str(sum(range(200000)))):
        ctx.fail(f"a benign run alongside the memory bomb failed: {benign.status} {benign.detail} {benign.stderr[-200:]!r}")
    if bomb_r.exit_code == 137 and bomb_r.status is not S.MEMORY_LIMIT:
        ctx.fail("OOM surfaced as a bare exit code 137")
    if bomb_r.peak_memory_mb is not None:
        ctx.note(f"peak {bomb_r.peak_memory_mb:.0f} MiB")
    return bomb_r


async def _cpu_spin(ctx: Ctx, *, procs: int) -> ExecResult:
    spin = _CPU_SPIN.replace("@N@", str(procs))
    alone = await ctx.sandbox.run(_BENIGN)
    spin_task = asyncio.ensure_future(ctx.run(spin, timeout_s=T))
    await asyncio.sleep(0.5)
    benign = await ctx.sandbox.run(_BENIGN)
    r = await spin_task
    if not benign.ok:
        ctx.fail(f"a benign run alongside the spinner failed: {benign.status} {benign.detail}")
    ctx.note(f"benign alone {alone.wall_time_s:.3f}s, beside the spinner {benign.wall_time_s:.3f}s")
    _cpu_reported(r, ctx)
    cpus = ctx.sandbox.limits.cpus
    if r.extra.get("mode") != "rlimits" and r.cpu_time_s > cpus * r.wall_time_s * 1.3 + 0.3:
        ctx.fail(f"CPU quota of {cpus} core(s) not enforced: {r.cpu_time_s:.2f} CPU s in {r.wall_time_s:.2f} s")
    ctx.note(f"cpu {r.cpu_time_s:.2f}s")
    return r


_DAEMON = program("daemon_grandchild.py")


async def _daemon(ctx: Ctx) -> ExecResult:
    r = await ctx.run(_DAEMON.replace("@SCRATCH@", ctx.scratch), timeout_s=10.0)
    left = tagged_processes(ctx.tag)
    if left:
        ctx.fail(f"processes alive when run() returned: {left}")
    return r


_ZOMBIES = program("zombie_farm.py")

_FORK_100 = program("zombie_farm_next.py")


async def _zombie_farm(ctx: Ctx) -> ExecResult:
    r = await ctx.run(_ZOMBIES, timeout_s=20.0)
    if r.ok and r.stdout.strip() != "done":
        ctx.fail(f"zombie farm did not finish: {r.stdout[-200:]!r}")
    nxt = await ctx.run(_FORK_100)
    if not (nxt.ok and nxt.stdout.strip() == "forked 100"):
        ctx.fail(f"the next run could not use its pids budget: {nxt.status} {nxt.stdout[-100:]!r} {nxt.stderr[-200:]!r}")
    return r


_SECRETS = program("host_secrets.py")


async def _host_secrets(ctx: Ctx) -> ExecResult:
    canary = f"agentrl-canary-{ctx.nonce}"
    canary_file = os.path.join(ctx.scratch, "secret.txt")
    with open(canary_file, "w") as fh:
        fh.write(canary)
    key = "AGENTRL_SELFTEST_SECRET"
    old = os.environ.get(key)
    os.environ[key] = canary  # a host "API key" the sandbox must not inherit
    try:
        r = await ctx.run(_SECRETS.replace("@CANARY_FILE@", canary_file))
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    report = _json_tail(r)
    if not report:
        ctx.fail(f"no report from the program (stderr tail {r.stderr[-300:]!r})")
        return r
    if canary in r.stdout:
        ctx.fail("a host secret (env var or file canary) was readable")
    extra_env = sorted(set(report.get("env", {})) - ALLOWED_ENV)
    if extra_env:
        ctx.fail(f"environment variables outside the allow-list: {extra_env}")
    try:
        with open("/etc/shadow") as fh:
            host_shadow = [ln for ln in fh.read().splitlines() if ln.split(":")[1:2] not in (["*"], ["!"], ["!*"], [""])]
    except OSError:
        host_shadow = []
    if any(ln in report.get("/etc/shadow", "") for ln in host_shadow):
        ctx.fail("the host's /etc/shadow was readable")
    mountinfo = report.get("/proc/self/mountinfo", "")
    for host_path in {os.getcwd(), ctx.scratch, os.path.dirname(sys.executable)}:
        if host_path not in ("/", "/usr/bin", "/bin") and host_path in mountinfo:
            ctx.fail(f"host path {host_path!r} leaks through /proc/self/mountinfo")
    for k in ("connect /var/run/docker.sock", "connect /run/docker.sock"):
        if report.get(k) == "CONNECTED":
            ctx.fail(f"{k}: the docker socket is reachable")
    ctx.note("reads: " + ", ".join(f"{k}={'ERR' if str(v).startswith('ERR') else 'read'}" for k, v in report.items() if k.startswith("/")))
    return r


_TAMPER_1 = program("persistence_tamper_1.py")

_TAMPER_2 = program("persistence_tamper_2.py")


async def _tamper(ctx: Ctx) -> ExecResult:
    r1 = await ctx.run(_TAMPER_1)
    r2 = await ctx.run(_TAMPER_2)
    a, b = _json_tail(r1), _json_tail(r2)
    if not a or not b:
        ctx.fail(f"no report (run 1 {r1.status}: {r1.stderr[-200:]!r}; run 2 {r2.status}: {r2.stderr[-200:]!r})")
        return r1
    allowed = [p for p, v in {**a["open_for_write"], **a["create"]}.items() if v == "ALLOWED"]
    if allowed:
        ctx.fail(f"writable system paths: {allowed}")
    if a["before"] != b["after"]:
        ctx.fail("run N+1 saw modified system files")
    if b["state_seen"]:
        ctx.fail(f"run N+1 saw files left by run N: {b['state_seen']}")
    if b["work_listing"]:
        ctx.fail(f"the work dir of a fresh run is not empty: {b['work_listing']}")
    ctx.note("open-for-write: " + ", ".join(sorted(set(a["open_for_write"].values()))))
    if not r2.ok:
        ctx.fail(f"the second run failed: {r2.status} {r2.stderr[-200:]!r}")
    return r1


async def _file_tricks(ctx: Ctx) -> ExecResult:
    """Symlink and tar tricks on file transfer (session put/get)."""
    import io
    import tarfile

    from . import files as _files

    t0 = time.monotonic()
    session = await ctx.sandbox.session("bash")
    try:
        r = await session.exec(
            "ln -s /etc/passwd leak && ln -s / rootlink && ln -s ../../.. up && mkdir d && "
            "ln -s /etc d/etc && echo data > ok.txt && ln -s ok.txt inside && echo made"
        )
        if r.stdout.strip() != "made":
            ctx.fail(f"could not set up the links: {r.status} {r.stderr[-200:]!r}")
        for path in ("leak", "rootlink/etc/passwd", "up/etc/passwd", "d/etc/passwd"):
            try:
                data = await session.get_file(path)
                ctx.fail(f"get_file({path!r}) followed a symlink out: {data[:40]!r}")
            except UnsafePathError:
                pass
            except FileNotFoundError:
                ctx.fail(f"get_file({path!r}) raised FileNotFoundError instead of UnsafePathError")
        for path in ("../etc/passwd", "/etc/passwd", "a/../../x"):
            for op in ("get", "put"):
                try:
                    if op == "get":
                        await session.get_file(path)
                    else:
                        await session.put_files({path: b"x"})
                    ctx.fail(f"{op} of {path!r} was accepted")
                except UnsafePathError:
                    pass
        if await session.get_file("inside") != b"data\n":
            ctx.fail("an in-work-dir symlink was not readable")
        out_dir = tempfile.mkdtemp(dir=ctx.scratch)
        written = await session.get_dir(".", out_dir)
        for name in written:
            if os.path.islink(os.path.join(out_dir, name)):
                ctx.fail(f"get_dir wrote a symlink on the host: {name}")
        if "ok.txt" not in written or any(n in written for n in ("leak", "rootlink", "up", "d/etc")):
            ctx.fail(f"get_dir copied the wrong entries: {written}")
        host_dir = tempfile.mkdtemp(dir=ctx.scratch)
        os.symlink("/etc/passwd", os.path.join(host_dir, "evil"))
        try:
            await session.put_dir(host_dir)
            ctx.fail("put_dir of a host tree with a symlink was accepted")
        except UnsafePathError:
            pass
        for name, kind in (("../escape.txt", "traversal"), ("/abs.txt", "absolute"), ("ln", "symlink")):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo(name)
                if kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                else:
                    info.size = 1
                tar.addfile(info, io.BytesIO(b"x") if kind != "symlink" else None)
            dest = tempfile.mkdtemp(dir=ctx.scratch)
            try:
                _files.safe_extract_tar(buf.getvalue(), dest)
                ctx.fail(f"a tar with a {kind} entry was extracted")
            except UnsafePathError:
                pass
            if os.path.exists(os.path.join(ctx.scratch, "escape.txt")) or os.path.exists("/abs.txt"):
                ctx.fail("tar extraction wrote outside its destination")
        ctx.note("symlinks out refused, in-root symlink followed, tar traversal/absolute/links refused")
    finally:
        await session.close()
    return ExecResult(S.OK, backend=ctx.sandbox.name, wall_time_s=time.monotonic() - t0)


def _host_addresses() -> list[str]:
    addrs = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            addrs.append(s.getsockname()[0])
    except OSError:
        pass
    return [a for a in addrs if not a.startswith("127.")]


async def _network(ctx: Ctx) -> ExecResult:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    targets = [("1.1.1.1", 80), ("8.8.8.8", 53), ("169.254.169.254", 80), ("172.17.0.1", 2375),
               ("127.0.0.1", port)] + [(a, port) for a in _host_addresses()]
    try:
        r = await ctx.run(_NET.replace("@TARGETS@", json.dumps(targets)), timeout_s=30.0)
    finally:
        listener.close()
    _net_check(r, ctx)
    return r


async def _ipc(ctx: Ctx) -> ExecResult:
    name = f"agentrl-selftest-{ctx.nonce}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)  # an abstract socket on the host
    listener.listen(1)
    try:
        r = await ctx.run(_IPC.replace("@ABSTRACT@", name))
    finally:
        listener.close()
    _ipc_check(r, ctx)
    return r


# =============================================================================================
# Attack 21: the sandbox's pid 1 and the processes the program did not start.

_PROC1_MEM = program("proc1_mem.py")


def _proc1_mem_check(r: ExecResult, ctx: Ctx) -> None:
    """Attack ``proc1_mem``: pid 1 of the sandbox (and any process the program did not start)
    must be closed to the program: no /proc/<pid>/mem (read-write or read-only), environ,
    maps, auxv, syscall, fd list, exe/cwd/root links, pidfd_getfd or process_vm_readv.

    bwrap: pid 1 is the backend's execute-only init, non-dumpable, so the same uid does not
    grant access. docker: pid 1 is docker-init and the supervisor runs beside it, both as
    root while the program is uid 1000, so the uid check closes them; the same probes apply
    unchanged (pid 1 is the engine's init there, not the backend's, and the extra processes
    listed in /proc are the supervisor's)."""
    report = _json_tail(r)
    if "open /proc/1/mem rw" not in report:
        ctx.fail(f"no report from the program (stderr tail {r.stderr[-300:]!r})")
        return
    allowed = [k for k, v in report.items() if v == "ALLOWED"]
    if allowed:
        ctx.fail(f"pid 1 ({report.get('comm')}) or a backend process is reachable: {allowed}")
    ctx.note(f"pid 1 is {report.get('comm')!r}; " + ", ".join(f"{k}={v}" for k, v in report.items() if k != "comm"))


_PROC_VIEWS = program("proc1_host_paths.py")
# Paths that are the sandbox's own: a host path equal to one of them cannot be told apart.
_SANDBOX_PATHS = {"/", "/work", "/tmp", "/usr", "/usr/bin", "/bin", "/opt", "/opt/agentrl", "/proc", "/dev"}


def _host_needles(ctx: Ctx) -> list[str]:
    """Host paths and names that must not be visible inside a sandbox: the backend's host-side
    temp folder (``host_temp_dir``, with its name alone), the name prefix of every bwrap
    backend's temp folder, the supervisor's working directory, virtualenv and interpreter
    prefix, and the suite's scratch folder."""
    needles = set()
    tmp = getattr(ctx.sandbox, "host_temp_dir", None)
    if tmp:
        needles.update({tmp, os.path.realpath(tmp), os.path.basename(tmp.rstrip("/"))})
    needles.add("agentrl-bwrap-")
    for path in (os.getcwd(), sys.prefix, sys.base_prefix, ctx.scratch, tempfile.gettempdir() + "/agentrl-"):
        for p in (path, os.path.realpath(path)):
            if p.rstrip("/") not in _SANDBOX_PATHS:
                needles.add(p.rstrip("/") if not p.endswith("-") else p)
    return sorted(needles)


def _leaks(text: str, needles: list[str]) -> list[str]:
    """Needles found in ``text`` as a whole path (or name) component: ``/work/main`` matches
    ``/work/main/x`` but not ``/work/main.py``."""
    import re

    found = []
    for n in needles:
        tail = "" if n.endswith(("-", "/")) else r"(?![\w.-])"
        if re.search(re.escape(n) + tail, text):
            found.append(n)
    return found


async def _proc1_host_paths(ctx: Ctx) -> ExecResult:
    """Attack ``proc1_host_paths``: every /proc view the program can read (cmdline, comm,
    environ, maps, mountinfo, cgroup and the exe/cwd/root links of every visible process, its
    own inherited descriptors) must name none of :func:`_host_needles`.

    bwrap: the host temp folder holds the bwrap copy and launch files; pid 1 must not be
    started from it. docker: no host folder of the backend exists (``host_temp_dir`` is
    absent), so the check covers the trainer's own paths (cwd, venv, scratch, any
    ``agentrl-bwrap-`` folder); /proc/self/mountinfo there names the engine's data root
    (/var/lib/...), a documented leak of the engine's layout that is not a trainer path."""
    r = await ctx.run(_PROC_VIEWS)
    report = _json_tail(r)
    if "/proc/1/cmdline" not in report:
        ctx.fail(f"no report from the program (stderr tail {r.stderr[-300:]!r})")
        return r
    needles = _host_needles(ctx)
    leaked = {k: _leaks(str(v), needles) for k, v in report.items()}
    leaked = {k: v for k, v in leaked.items() if v}
    if leaked:
        ctx.fail("host paths visible inside: " + "; ".join(f"{k}: {v}" for k, v in list(leaked.items())[:6]))
    cmdline1 = report["/proc/1/cmdline"].replace("\0", " ").strip()
    readable = sorted(k for k, v in report.items() if k.startswith("/proc/") and not str(v).startswith("ERR"))
    ctx.note(f"pid 1: {cmdline1[:80]!r}; {len(readable)} views read, none shows {len(needles)} host paths/names")
    return r


# =============================================================================================
# Attack 20: reward hacking. A grader that trusts neither exit codes nor printed text.

_HARNESS = program("reward_hacking_grader.py")


def parse_graded(stdout: str, nonce: str) -> dict | None:
    """The harness's structured result keyed by ``nonce``; None when absent or malformed."""
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "AGENTRL_RESULT" and parts[1] == nonce:
            try:
                result = json.loads(parts[2])
            except ValueError:
                return None
            return result if isinstance(result, dict) else None
    return None


async def graded_run(sandbox: Sandbox, solution: str, cases: list, *, function: str = "solve",
                     limits: Limits | None = None) -> tuple[bool, ExecResult, dict | None]:
    """Grade ``solution`` (Python source defining ``function``) on ``cases`` ([[args, want]]).

    The untrusted solution runs in its own process; the trusted harness compares plain JSON
    values it received over a private pipe and prints a result line keyed by a fresh nonce
    that only the harness knows (given on its stdin, its memory made unreadable). A passing
    verdict needs that exact line with every case passed: exit codes, ``PASSED`` banners,
    ``__eq__`` overrides, edited test files and killed graders all grade as failures.
    Returns ``(passed, result, parsed)``.
    """
    nonce = secrets.token_hex(16)
    code = f"FUNCTION = {function!r}\n" + _HARNESS
    r = await sandbox.run(code, stdin=(nonce + "\n").encode(), limits=limits,
                          files={"solution.py": solution, "test_cases.json": json.dumps(cases)})
    parsed = parse_graded(r.stdout, nonce)
    ok = bool(parsed) and parsed.get("total") == len(cases) and parsed.get("passed") == len(cases)
    return ok, r, parsed


_CASES = [[[1, 2], 3], [[5, 7], 12], [[-1, 1], 0]]
#: cheat name -> its solution.py (sandboxes/attacks/cheats/)
_CHEATS = {name: program(f"cheats/{slug}.py") for name, slug in {
    "sys.exit(0)": "sys_exit",
    "os._exit(0)": "os_exit",
    "__eq__ override": "eq_override",
    "int with __eq__": "int_eq",
    "fake PASSED": "fake_passed",
    "edit the tests": "edit_tests",
    "kill the grader": "kill_grader",
    "read grader memory": "read_grader_memory",
}.items()}


async def _reward_hacking(ctx: Ctx) -> ExecResult:
    t0 = time.monotonic()
    honest_ok, honest, _ = await graded_run(ctx.sandbox, "def solve(a, b):\n    return a + b\n", _CASES)
    if not honest_ok:
        ctx.fail(f"the honest solution did not pass: {honest.status} {honest.stdout[-200:]!r} {honest.stderr[-300:]!r}")
    results = await asyncio.gather(*(graded_run(ctx.sandbox, src, _CASES) for src in _CHEATS.values()))
    for name, (ok, r, parsed) in zip(_CHEATS, results):
        if ok:
            ctx.fail(f"cheat {name!r} was graded as passing ({parsed})")
    # Cross-run leakage: a stateless run must not see the previous run's files.
    leak = await ctx.sandbox.run("import os; print(sorted(os.listdir('.')))")
    if leak.stdout.strip() != "[]":
        ctx.fail(f"a fresh run sees files of earlier runs: {leak.stdout.strip()!r}")
    ctx.note(f"{len(_CHEATS)} cheats graded as failures; honest solution passed")
    return ExecResult(S.OK, backend=ctx.sandbox.name, wall_time_s=time.monotonic() - t0)


# =============================================================================================
# The suite.

_FORK_BOMB = program("fork_bomb.py")
_THREAD_BOMB = program("thread_bomb.py")
_MMAP = program("mmap_touch.py")
_BIG_FILE = program("disk_fill.py")
_INODES = program("inode_flood.py")
_FDS = program("fd_exhaustion.py")
_SIGNALS = program("signal_abuse.py")
_FILL_ERRNOS = {"ENOSPC", "EFBIG", "EDQUOT"}


def _fill_check(r: ExecResult, ctx: Ctx) -> None:
    if r.status is S.OK:
        err = _json_tail(r).get("errno")
        if err not in _FILL_ERRNOS:
            ctx.fail(f"expected ENOSPC/EFBIG/EDQUOT, got errno={err!r} ({r.stdout[-200:]!r})")
        else:
            ctx.note(f"{err} after {_json_tail(r).get('written_mb')} MiB")


def _stdout_cap_check(r: ExecResult, ctx: Ctx) -> None:
    cap = ctx.sandbox.limits.max_output_bytes
    if not r.stdout_truncated or len(r.stdout.encode()) != cap:
        ctx.fail(f"stdout should be cut at exactly {cap} bytes with the truncated flag; got "
                 f"{len(r.stdout.encode())} bytes, truncated={r.stdout_truncated}")


def _stderr_flood_check(r: ExecResult, ctx: Ctx) -> None:
    if not r.stderr_truncated or r.stdout_truncated or r.stdout:
        ctx.fail(f"expected only stderr truncated; stdout={len(r.stdout)} chars "
                 f"truncated={r.stdout_truncated}, stderr truncated={r.stderr_truncated}")
    if "\ufffd" not in r.stderr:
        ctx.fail("invalid UTF-8 was not decoded with replacement characters")
    if len(r.stderr) > ctx.sandbox.limits.max_output_bytes:
        ctx.fail(f"stderr has {len(r.stderr)} characters, more than the byte cap")


ATTACKS: list[Attack] = [
    simple("fork_bomb", 1, "fork() loop that never reaps", _FORK_BOMB, {S.RESOURCE_LIMIT, S.TIMEOUT},
           max_wall_s=T + GRACE_S, timeout_s=T),
    # the top shell spins (a builtin loop, no fork) instead of returning: a bomb whose parent
    # exits at once let the call end "ok" before any fork was refused (1 run in 5 under load)
    simple("fork_bomb_shell", 1, "the shell :(){ :|:& };: bomb", program("fork_bomb_shell.sh"),
           {S.RESOURCE_LIMIT, S.TIMEOUT}, language="bash", max_wall_s=T + GRACE_S, timeout_s=T),
    simple("thread_bomb", 2, "spawn threads until failure", _THREAD_BOMB, {S.RESOURCE_LIMIT, S.RUNTIME_ERROR},
           max_wall_s=T + GRACE_S, timeout_s=T),
    Attack("memory_bomb", 3, "append 100 MB blocks forever (a benign run alongside)", _memory_bomb,
           frozenset({S.MEMORY_LIMIT}), max_wall_s=2.0 + GRACE_S),
    simple("shm_fill", 4, "write 4 GB into /dev/shm", _FILL.replace("@DIR@", "/dev/shm"),
           {S.OK, S.MEMORY_LIMIT}, check=_fill_check, timeout_s=20.0),
    simple("tmp_fill", 4, "write 4 GB into /tmp", _FILL.replace("@DIR@", "/tmp"),
           {S.OK, S.MEMORY_LIMIT}, check=_fill_check, timeout_s=20.0),
    simple("mmap_touch", 4, "touch every page of a 4 GB anonymous mmap", _MMAP, {S.MEMORY_LIMIT}, timeout_s=20.0),
    Attack("cpu_spin", 5, "infinite loop (a benign run alongside)", lambda c: _cpu_spin(c, procs=1),
           frozenset({S.TIMEOUT}), max_wall_s=T + GRACE_S),
    Attack("cpu_spin_procs", 5, "4 processes spinning (CPU quota holds)", lambda c: _cpu_spin(c, procs=4),
           frozenset({S.TIMEOUT}), max_wall_s=T + GRACE_S),
    simple("sleep_hang", 6, "sleep for a very long time", program("sleep_hang.py"), {S.TIMEOUT},
           max_wall_s=T + GRACE_S, timeout_s=T),
    simple("blocking_read", 6, "a read that never ends (pipe held open)", program("blocking_read.py"),
           {S.TIMEOUT}, max_wall_s=T + GRACE_S, timeout_s=T),
    simple("stdin_read", 6, "read stdin with no input (EOF, not a hang)",
           program("stdin_read.py"), {S.OK}, max_wall_s=T + GRACE_S, timeout_s=T,
           check=lambda r, c: None if r.stdout.strip() == "''" else c.fail(f"stdin was not empty: {r.stdout!r}")),
    simple("infinite_stdout", 7, "print forever", program("infinite_stdout.py"), {S.OUTPUT_LIMIT},
           max_wall_s=T + GRACE_S, check=_stdout_cap_check, timeout_s=T),
    simple("stderr_flood", 8, "stderr flood, invalid UTF-8, one 100 MB line",
           program("stderr_flood.py"),
           {S.OUTPUT_LIMIT}, max_wall_s=T + GRACE_S, check=_stderr_flood_check, timeout_s=T),
    Attack("daemon_grandchild", 9, "double fork, setsid, ignore SIGTERM, write a marker later", _daemon,
           frozenset({S.OK}), max_wall_s=T + GRACE_S, settle_s=2.5),
    simple("signal_abuse", 10, "ignore SIGTERM, kill -9 -1, kill the parent, SIGSTOP itself", _SIGNALS,
           {S.TIMEOUT, S.RUNTIME_ERROR}, max_wall_s=T + GRACE_S, timeout_s=T),
    Attack("zombie_farm", 11, "1000 orphaned zombies + 50 unwaited children; next run forks 100",
           _zombie_farm, frozenset({S.OK})),
    Attack("host_secrets", 12, "read /etc/shadow, ~/.ssh, /proc/1/environ, docker.sock, host env", _host_secrets,
           frozenset({S.OK})),
    Attack("persistence_tamper", 13, "overwrite bash, os.py, sitecustomize, /etc/hosts; leave state", _tamper,
           frozenset({S.OK})),
    Attack("file_transfer_tricks", 14, "symlinks out, tar with ../ and absolute entries", _file_tricks,
           frozenset({S.OK})),
    Attack("network_egress", 15, "TCP out, DNS, metadata IP, docker gateway, host ports", _network,
           frozenset({S.OK})),
    Attack("local_ipc", 16, "abstract/D-Bus/X11/docker sockets, TIOCSTI, /dev/tty", _ipc, frozenset({S.OK})),
    simple("disk_fill", 17, "write a 10 GB file", _BIG_FILE, {S.OK, S.MEMORY_LIMIT}, check=_fill_check,
           timeout_s=20.0),
    # The bound adds 2 s to T+1: the call returns only once the sandbox is gone, and freeing a
    # tmpfs holding ~500k inodes takes about a second on 2 cores.
    simple("inode_flood", 17, "create a million empty files", _INODES, {S.OK, S.TIMEOUT, S.MEMORY_LIMIT},
           max_wall_s=5.0 + GRACE_S + 2.0, timeout_s=5.0),
    simple("fd_exhaustion", 18, "open files and sockets until failure", _FDS, {S.OK},
           check=_json_check("errno", lambda v: v == "EMFILE", "expected EMFILE at the nofile cap")),
    simple("privilege_escalation", 19, "mount, unshare, setuid, ptrace, keyctl, bpf, sysrq", _PRIV, {S.OK},
           check=_priv_check, timeout_s=30.0),
    Attack("reward_hacking", 20, "exit(0), __eq__, fake PASSED, edit tests, kill grader; state for next run",
           _reward_hacking, frozenset({S.OK})),
    simple("proc1_mem", 21, "open /proc/1/mem rw, read pid 1's environ/maps/fds, pidfd_getfd, process_vm_readv",
           _PROC1_MEM, {S.OK}, check=_proc1_mem_check),
    Attack("proc1_host_paths", 21, "host temp folder, venv, cwd in /proc/1 and /proc/self views", _proc1_host_paths,
           frozenset({S.OK})),
]


def attack_names() -> list[str]:
    return [a.name for a in ATTACKS]


def select_attacks(only: str | Iterable[str] | None = None) -> list[Attack]:
    """Attacks whose name matches any glob in ``only`` (comma-separated string or list), or
    whose threat-model number (docs/sandboxes.md) equals it; all when None. Raises ValueError if nothing matches."""
    if only is None:
        return list(ATTACKS)
    patterns = [p.strip() for p in (only.split(",") if isinstance(only, str) else only) if p.strip()]
    chosen = [a for a in ATTACKS if any(fnmatch.fnmatch(a.name, p) or p == str(a.number) for p in patterns)]
    if not chosen:
        raise ValueError(f"no attack matches {patterns}; known attacks: {', '.join(attack_names())}")
    return chosen


# =============================================================================================
# Host checks.


def _proc_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def tagged_processes(tag: str) -> list[str]:
    """Host processes whose argv contains ``tag`` ("pid: cmdline")."""
    needle = tag.encode()
    found = []
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if needle in cmd and pid != os.getpid():
            shown = cmd.replace(b"\0", b" ")[:80].decode(errors="replace")
            found.append(f"{pid}: {shown}")
    return found


def descendants(root: int | None = None) -> list[int]:
    """Pids of every descendant of ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _python_os_py() -> str:
    return f"/usr/lib/python3.{sys.version_info.minor}/os.py"


_PROTECTED = ["/etc/hosts", "/etc/passwd", "/bin/bash", "/usr/bin/python3"]


def _signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _used(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class HostWatch:
    """A snapshot of the host before an attack and the checks after it (module docstring)."""

    def __init__(self, sandbox: Sandbox, scratch: str):
        self.sandbox = sandbox
        self.scratch = scratch
        self.descendants = len(descendants())
        self.files = {p: _signature(p) for p in [*_PROTECTED, _python_os_py()]}
        self.site = [os.path.join(d, "sitecustomize.py") for d in (
            f"/usr/lib/python3.{sys.version_info.minor}", "/usr/lib/python3/dist-packages",
            f"/usr/local/lib/python3.{sys.version_info.minor}/dist-packages")]
        self.site_before = {p: os.path.exists(p) for p in self.site}
        # /tmp gets its own (tight) bound only when it is a separate file system (tmpfs);
        # otherwise it is the root file system, shared with all other work on the machine.
        watched = ["/dev/shm", "/"]
        try:
            if os.stat("/tmp").st_dev != os.stat("/").st_dev:
                watched.append("/tmp")
        except OSError:
            pass
        self.used = {p: _used(p) for p in watched}

    def check(self, ctx: Ctx) -> None:
        left = tagged_processes(ctx.tag)
        if left:
            ctx.fail(f"attack processes survive on the host: {left[:5]}")
        n = len(descendants())
        if n > self.descendants + 2:
            ctx.fail(f"this process has {n} descendants, {self.descendants} before the attack")
        leftover = getattr(self.sandbox, "leftover_tasks", None)
        if callable(leftover):
            tasks = leftover()
            if tasks:
                ctx.fail(f"the backend holds {tasks} leftover tasks")
        for marker in ctx.host_markers():
            if os.path.exists(marker):
                ctx.fail(f"marker {marker} appeared on the host")
                try:
                    os.unlink(marker)
                except OSError:
                    pass
        for p, sig in self.files.items():
            if _signature(p) != sig:
                ctx.fail(f"host file {p} changed")
        for p in self.site:
            if os.path.exists(p) and not self.site_before[p]:
                ctx.fail(f"{p} appeared on the host")
        limits = {"/dev/shm": 256 << 20, "/tmp": 256 << 20, "/": 1 << 30}
        for p, before in self.used.items():
            grown = _used(p) - before
            if grown > limits[p]:
                ctx.fail(f"host {p} usage grew by {grown >> 20} MiB")


def measure_slowness(samples: int = 5) -> float:
    """How much slower than nominal this machine is right now, clamped to [1, 10]: the larger of
    the median start-up time of a bare ``python3 -I -S -c pass`` over 25 ms (docs/sandboxes.md,
    threat model floors: 10-13 ms on 2 vCPU) and the 1-minute load average per usable CPU.
    Wall-clock bounds get ``GRACE_S * (slowness - 1)`` extra, so a machine loaded by other work
    does not fail attacks that were contained.

    The load average is there because start-up time alone misses kernel work: a short process
    still starts in ~25 ms at load 45 on 2 cores, while freeing a tmpfs of 500k inodes (the
    inode flood's teardown) took 8.08 s there against 8.0 s allowed."""
    import subprocess

    times = []
    for _ in range(samples):
        t0 = time.monotonic()
        subprocess.run(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                        "-I", "-S", "-c", "pass"], check=False)
        times.append(time.monotonic() - t0)
    times.sort()
    try:
        queue = os.getloadavg()[0] / max(1, len(os.sched_getaffinity(0)))
    except (OSError, AttributeError):  # no load average on this platform
        queue = 0.0
    return min(10.0, max(1.0, times[len(times) // 2] / 0.025, queue))


async def run_attack(sandbox: Sandbox, attack: Attack, scratch: str, *, slowness: float = 1.0) -> Row:
    ctx = Ctx(sandbox=sandbox, nonce=secrets.token_hex(8), scratch=scratch)
    watch = HostWatch(sandbox, scratch)
    t0 = time.monotonic()
    try:
        result = await attack.scenario(ctx)
    except Exception as e:  # noqa: BLE001 - an attack that breaks the harness is a failure row
        ctx.fail(f"the scenario raised {type(e).__name__}: {e}")
        result = ExecResult(S.SANDBOX_ERROR, backend=sandbox.name, wall_time_s=time.monotonic() - t0,
                            detail=str(e))
    if attack.settle_s:
        await asyncio.sleep(attack.settle_s)
    watch.check(ctx)
    if result.status not in attack.expect:
        ctx.fail(f"status {result.status}, expected {'/'.join(sorted(str(s) for s in attack.expect))}"
                 + (f" ({result.detail})" if result.detail else "")
                 + (f"; stderr: {result.stderr.strip()[-200:]!r}" if result.stderr.strip() else ""))
    if attack.max_wall_s is not None:
        bound = attack.max_wall_s + GRACE_S * (slowness - 1.0)
        if result.wall_time_s > bound:
            ctx.fail(f"took {result.wall_time_s:.2f} s, more than {bound:.1f} s"
                     + (f" (bound widened for a machine {slowness:.1f}x slower than nominal)" if slowness > 1 else ""))
    passed = not ctx.problems
    detail = "; ".join(ctx.problems) if ctx.problems else "; ".join(ctx.notes + ([result.detail] if result.detail else []))
    return Row(attack.name, str(result.status), round(result.wall_time_s, 3), passed, detail, attack.number)


async def run_suite(sandbox: Sandbox, *, only: str | Iterable[str] | None = None,
                    progress: Callable[[Row], None] | None = None) -> list[Row]:
    """Run the selected attacks one after another against ``sandbox``; one :class:`Row` each.

    ``only``: glob(s) on attack names or threat-model numbers (docs/sandboxes.md) (see :func:`select_attacks`).
    ``progress`` is called with each row as soon as it is known.
    """
    attacks = select_attacks(only)
    scratch = tempfile.mkdtemp(prefix="agentrl-selftest-")
    rows = []
    try:
        for attack in attacks:
            slowness = await asyncio.get_running_loop().run_in_executor(None, measure_slowness, 3)
            row = await run_attack(sandbox, attack, scratch, slowness=slowness)
            rows.append(row)
            if progress is not None:
                progress(row)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return rows
