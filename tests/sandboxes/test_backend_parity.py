"""Backend parity: ordinary, benign programs behave the same on bwrap and docker.

The adversarial suite checks that both backends contain attacks; this file checks that they do
not break what a well-behaved agent runs. Each program runs on *both* backends (concurrently)
and must end ``ok`` with the same stdout, and with the stdout written here, on each: two
backends failing the same way do not pass.

The programs cover what a root filesystem assembled from ``ldd`` output misses (the docker
backend's locally built image, :mod:`agentrl.sandboxes.images`): libraries glibc dlopens by
name (``libgcc_s`` for thread exit, NSS modules for ``getpwuid``), locale and time zone data,
``/etc/hosts``, plus the process machinery (multiprocessing, subprocess) and session state.

No program here has a legitimate backend difference: both backends run the code as uid
:data:`~agentrl.sandboxes.images.SANDBOX_UID` named ``sandbox`` with home and cwd ``/work``,
host name ``sandbox``, ``LANG=C.UTF-8``, and synthesize the same ``/etc/passwd``, ``/etc/group``
and ``/etc/hosts``, so even the user name and host name are asserted equal. What does differ
(pids, cgroup paths, ``/proc/self/mountinfo``, the interpreter build when the host's ``python3``
differs from the image's) is left out of the programs on purpose.

The docker backend needs an engine; like every docker test here it fails (never skips) without
one, with the message saying how to start one.
"""

from __future__ import annotations

import asyncio

import pytest
from agentrl.sandboxes import ExecResult, Status, get_sandbox, images, run_sync

BACKENDS = ("bwrap", "docker")
pytestmark = pytest.mark.docker

UID = images.SANDBOX_UID


@pytest.fixture(scope="module")
def boxes():
    """Both backends with default limits (as conftest.make_sandbox: docker starts up front,
    and raises BackendUnavailableError, failing every test here, without an engine)."""
    made = {}
    try:
        for name in BACKENDS:
            made[name] = get_sandbox(name)
            if callable(getattr(made[name], "start", None)):
                run_sync(made[name].start())
        yield made
    finally:
        for box in made.values():
            box.close_sync()


def _show(results: dict[str, ExecResult]) -> str:
    return "\n".join(
        f"{n}: {r.status.value} exit={r.exit_code} detail={r.detail!r}\n  stdout={r.stdout!r}\n"
        f"  stderr={r.stderr[-600:]!r}" for n, r in results.items()
    )


def _assert_same_ok(results: dict[str, ExecResult], stdout: str) -> None:
    """Every backend: status ok, exactly ``stdout``, nothing on stderr."""
    got = {n: (r.status, r.stdout, r.stderr) for n, r in results.items()}
    assert got == {n: (Status.OK, stdout, "") for n in BACKENDS}, _show(results)


async def _run_on_both(boxes, code: str, language: str = "python") -> dict[str, ExecResult]:
    runs = [boxes[n].run(code, language=language) for n in BACKENDS]
    return dict(zip(BACKENDS, await asyncio.gather(*runs)))


# (id, program, the stdout both backends must print)
PROGRAMS = [
    pytest.param(
        # Daemon threads still running at interpreter exit are ended with pthread_exit, which
        # unwinds through libgcc_s (dlopened by glibc): without it, SIGABRT after 'main done'.
        "import threading, time\n"
        "def w():\n"
        "    while True: time.sleep(0.001)\n"
        "for _ in range(4): threading.Thread(target=w, daemon=True).start()\n"
        "time.sleep(0.2); print('main done')\n",
        "main done\n",
        id="daemon_threads_at_exit",
    ),
    pytest.param(
        "import ctypes\n"
        "lib = ctypes.CDLL('libgcc_s.so.1')\n"
        "print(hasattr(lib, '_Unwind_Backtrace'))\n",
        "True\n",
        id="ctypes_libgcc_s",
    ),
    pytest.param(
        # NSS lookups (libnss_files, separate from libc before glibc 2.34) against /etc/passwd
        # and /etc/group; getpass.getuser() falls back to pwd when $USER is unset.
        "import getpass, grp, os, pwd\n"
        "p = pwd.getpwuid(os.getuid())\n"
        "print(p.pw_uid, p.pw_gid, p.pw_name, p.pw_dir, p.pw_shell)\n"
        "print(grp.getgrgid(os.getgid()).gr_name, pwd.getpwnam('sandbox').pw_uid, getpass.getuser())\n"
        "print(os.path.expanduser('~'), os.getcwd())\n",
        f"{UID} {UID} sandbox /work /bin/bash\nsandbox {UID} sandbox\n/work /work\n",
        id="getpwuid",
    ),
    pytest.param(
        # setlocale(LC_ALL, '') reads LANG=C.UTF-8 (locale data, built into glibc >= 2.35).
        "import locale, sys, time\n"
        "print(locale.setlocale(locale.LC_ALL, ''), locale.getpreferredencoding(False))\n"
        "print(sys.getfilesystemencoding(), sys.stdout.encoding, locale.nl_langinfo(locale.CODESET))\n"
        "print(time.strftime('%A %B', time.gmtime(0)), 'd\\u00e9j\\u00e0 \\u2713')\n",
        "C.UTF-8 UTF-8\nutf-8 utf-8 UTF-8\nThursday January d\u00e9j\u00e0 \u2713\n",
        id="locale",
    ),
    pytest.param(
        # fork (the default here) and spawn (re-executes the interpreter on the main module).
        "import multiprocessing as mp\n"
        "def sq(x):\n"
        "    return x * x\n"
        "if __name__ == '__main__':\n"
        "    for method in ('fork', 'spawn'):\n"
        "        with mp.get_context(method).Pool(2) as pool:\n"
        "            print(method, pool.map(sq, range(6)))\n",
        "fork [0, 1, 4, 9, 16, 25]\nspawn [0, 1, 4, 9, 16, 25]\n",
        id="multiprocessing_pool",
    ),
    pytest.param(
        "import subprocess\n"
        "r = subprocess.run(['/bin/sh', '-c', 'echo hi'], capture_output=True, text=True)\n"
        "print(r.returncode, repr(r.stdout), repr(r.stderr))\n",
        "0 'hi\\n' ''\n",
        id="subprocess_sh",
    ),
    pytest.param(
        # /etc/hosts: docker hides the image's copy, the backend asks docker for the same
        # entries. Names outside it fail alike (no network, no resolver).
        "import socket\n"
        "print(socket.gethostname(), socket.gethostbyname('localhost'),\n"
        "      socket.gethostbyname(socket.gethostname()))\n"
        "print(socket.getaddrinfo('localhost', 80, socket.AF_INET, socket.SOCK_STREAM)[0][4])\n"
        "srv = socket.create_server(('localhost', 0)); port = srv.getsockname()[1]\n"
        "cli = socket.create_connection(('localhost', port), timeout=5)\n"
        "conn, _ = srv.accept(); cli.sendall(b'ping'); print(conn.recv(4))\n"
        "try:\n"
        "    socket.getaddrinfo('no-such-host.invalid', 80)\n"
        "except socket.gaierror as e:\n"
        "    print('unresolved', type(e).__name__)\n",
        "sandbox 127.0.0.1 127.0.0.1\n('127.0.0.1', 80)\nb'ping'\nunresolved gaierror\n",
        id="localhost",
    ),
    pytest.param(
        # The time zone database: zoneinfo reads it, and so does glibc for TZ=Area/City.
        "import datetime, os, time, zoneinfo\n"
        "d = datetime.datetime(2024, 1, 15, 12, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))\n"
        "print(d.isoformat(), d.tzname(), zoneinfo.ZoneInfo('UTC'))\n"
        "print(time.strftime('%Z'))\n"
        "os.environ['TZ'] = 'Asia/Tokyo'; time.tzset()\n"
        "print(time.tzname, time.strftime('%H:%M %Z', time.localtime(0)))\n",
        "2024-01-15T12:00:00+01:00 CET UTC\nUTC\n('JST', 'JST') 09:00 JST\n",
        id="time_zones",
    ),
]


@pytest.mark.parametrize("code, stdout", PROGRAMS)
async def test_benign_program_same_on_both_backends(boxes, code, stdout):
    _assert_same_ok(await _run_on_both(boxes, code), stdout)


async def test_session_reads_a_file_written_by_an_earlier_call(boxes):
    async def turns(name: str) -> list[ExecResult]:
        s = await boxes[name].session("python")
        try:
            first = await s.exec("with open('notes.txt', 'w') as f:\n    f.write('from call 1')\n")
            second = await s.exec("import os\nprint(open('notes.txt').read(), os.path.getsize('notes.txt'))")
            return [first, second, await s.exec("print(os.path.abspath('notes.txt'))")]
        finally:
            await s.close()

    runs = await asyncio.gather(*(turns(n) for n in BACKENDS))
    for i, stdout in enumerate(["", "from call 1 11\n", "/work/notes.txt\n"]):
        results = {n: r[i] for n, r in zip(BACKENDS, runs)}
        assert not any(r.extra.get("restarted") for r in results.values()), _show(results)
        _assert_same_ok(results, stdout)


async def test_bash_session_keeps_files_and_state(boxes):
    async def turns(name: str) -> list[ExecResult]:
        s = await boxes[name].session("bash")
        try:
            return [await s.exec("echo one > a.txt && X=two"),
                    await s.exec('cat a.txt; echo "$X"; sh -c "echo hi"')]
        finally:
            await s.close()

    runs = await asyncio.gather(*(turns(n) for n in BACKENDS))
    for i, stdout in enumerate(["", "one\ntwo\nhi\n"]):
        _assert_same_ok({n: r[i] for n, r in zip(BACKENDS, runs)}, stdout)
