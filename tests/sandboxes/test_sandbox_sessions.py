"""Stateful sessions on every backend: state survives turns; crashes, timeouts and caps are
reported and the session restarts cleanly; files go in and out with the files.py checks."""

from __future__ import annotations

import os

import pytest
from agentrl.sandboxes import SandboxError, Status, UnsafePathError, run_sync


@pytest.fixture
def py(sandbox):
    s = sandbox.session_sync("python", files={"data/input.txt": "seed\n"})
    yield s
    s.close_sync()


@pytest.fixture
def sh(sandbox):
    s = sandbox.session_sync("bash")
    yield s
    s.close_sync()


def test_python_state_survives_between_turns(py):
    r = py.exec_sync("import math\nx = 41\ndef inc(v):\n    return v + 1\n")
    assert r.ok and r.stdout == "" and not r.extra.get("restarted")
    r = py.exec_sync("x = inc(x)\nx * 2")  # a trailing expression is not echoed
    assert r.ok and r.stdout == ""
    r = py.exec_sync("print(x, math.pi > 3, open('data/input.txt').read().strip())")
    assert r.ok and r.stdout == "42 True seed\n"
    r = py.exec_sync("import os, subprocess\nos.write(1, b'raw\\n')\nsubprocess.run(['echo', 'child'])")
    assert r.stdout == "raw\nchild\n"


def test_python_errors_keep_the_session(py):
    r = py.exec_sync("y = 1\n1 / 0")
    assert r.status is Status.RUNTIME_ERROR and r.exit_code == 1
    assert "ZeroDivisionError: division by zero" in r.stderr and "1 / 0" in r.stderr
    r = py.exec_sync("import sys\nsys.exit(4)")
    assert r.status is Status.RUNTIME_ERROR and r.exit_code == 4 and not r.extra.get("restarted")
    r = py.exec_sync("b = bytearray(1 << 45)")
    assert r.status is Status.MEMORY_LIMIT and "MemoryError" in r.stderr
    r = py.exec_sync("print(y)")
    assert r.ok and r.stdout == "1\n"


def test_python_crash_restarts_cleanly(py):
    assert py.exec_sync("z = 5").ok
    r = py.exec_sync("import os\nos._exit(3)")
    assert r.status is Status.RUNTIME_ERROR and r.extra["restarted"] is True
    r = py.exec_sync("print('z' in globals(), open('data/input.txt').read().strip())")
    assert r.ok and r.stdout == "False seed\n"  # fresh interpreter, initial files put again


def test_timeout_kills_and_restarts(py):
    assert py.exec_sync("w = 1").ok
    r = py.exec_sync("import time\ntime.sleep(30)", timeout_s=1.0)
    assert r.status is Status.TIMEOUT and r.extra["restarted"] is True and r.wall_time_s < 15
    r = py.exec_sync("print('w' in globals())")
    assert r.ok and r.stdout == "False\n"


def test_output_cap_stops_the_cell_not_the_session(sandbox):
    s = sandbox.session_sync("python", limits=sandbox.limits.replace(max_output_bytes=10_000))
    try:
        assert s.exec_sync("k = 7").ok
        r = s.exec_sync("while True:\n    print('y' * 99)")
        assert r.status is Status.OUTPUT_LIMIT and r.stdout_truncated and len(r.stdout) == 10_000
        r = s.exec_sync("print(k)")
        assert r.ok and r.stdout == "7\n"
    finally:
        s.close_sync()


def test_bash_state_survives_and_exit_restarts(sh):
    assert sh.exec_sync("mkdir -p sub && cd sub && export V=hello && f() { echo fn $1; }").ok
    r = sh.exec_sync("pwd; echo $V; f 1; false")
    assert r.status is Status.RUNTIME_ERROR and r.exit_code == 1 and r.stdout == "/work/sub\nhello\nfn 1\n"
    r = sh.exec_sync("echo bye; exit 4")
    assert r.exit_code == 4 and r.stdout == "bye\n" and r.extra["restarted"] is True
    r = sh.exec_sync("pwd; echo \"[$V]\"")
    assert r.ok and r.stdout == "/work\n[]\n"


def test_bash_timeout(sh):
    r = sh.exec_sync("sleep 30", timeout_s=1.0)
    assert r.status is Status.TIMEOUT and r.extra["restarted"] is True
    assert sh.exec_sync("echo alive").stdout == "alive\n"


def test_files_in_and_out(sandbox, tmp_path):
    s = sandbox.session_sync("python")
    try:
        s.put_files_sync({"a/b.txt": "B", "c.bin": b"\x00\xff"})
        assert s.get_file_sync("a/b.txt") == b"B" and s.get_file_sync("c.bin") == b"\x00\xff"
        src = tmp_path / "src"
        (src / "pkg").mkdir(parents=True)
        (src / "pkg" / "m.py").write_text("VALUE = 3\n")
        run_sync(s.put_dir(src, "proj"))
        r = s.exec_sync("import sys\nsys.dont_write_bytecode = True\nsys.path.insert(0, 'proj')\nimport pkg.m\nprint(pkg.m.VALUE)\n"
                        "open('proj/out.txt', 'w').write('made')\nimport os\nos.symlink('/etc/passwd', 'proj/leak')")
        assert r.ok and r.stdout == "3\n"
        written = run_sync(s.get_dir("proj", tmp_path / "back"))
        assert written == ["out.txt", "pkg/m.py"]
        assert (tmp_path / "back" / "out.txt").read_text() == "made"
        assert not os.path.lexists(tmp_path / "back" / "leak")
        with pytest.raises(FileNotFoundError):
            s.get_file_sync("missing.txt")
        with pytest.raises(UnsafePathError):
            s.get_file_sync("proj/leak")
        with pytest.raises(UnsafePathError):
            s.get_file_sync("../etc/passwd")
        with pytest.raises(ValueError, match="max_bytes=1"):
            s.get_file_sync("c.bin", max_bytes=1)
    finally:
        s.close_sync()


def test_close_is_idempotent_and_final(sandbox):
    s = sandbox.session_sync("bash")
    assert s.exec_sync("echo hi").stdout == "hi\n"
    s.close_sync()
    s.close_sync()
    with pytest.raises(SandboxError, match="session is closed"):
        s.exec_sync("echo again")
