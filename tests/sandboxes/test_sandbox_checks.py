"""The argument checks every backend gets from the Sandbox base class (sandboxes/base.py):
``run`` and ``session`` refuse bad arguments before the backend's hook runs, with messages that
say what was passed, what is accepted and how to fix it. A backend-free stand-in records what
reaches the hooks."""

from __future__ import annotations

import pytest
from agentrl.sandboxes import Limits, SandboxConfigError, UnsafePathError, run_sync
from agentrl.sandboxes.base import Sandbox
from agentrl.sandboxes.types import ExecResult, Status


class Recording(Sandbox):
    name = "recording"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[tuple] = []

    async def _run_checked(self, code, language, stdin, files, limits):
        self.calls.append(("run", code, language, stdin, files, limits))
        return ExecResult(Status.OK, backend=self.name)

    async def _session_checked(self, kind, files, limits):
        self.calls.append(("session", kind, files, limits))
        return "a session"

    async def health(self):
        return {"ok": True}

    def metrics(self):
        return {}

    async def close(self):
        self._closed = True


def test_checked_arguments_reach_the_backend_normalised():
    box = Recording(limits=Limits(timeout_s=3))
    assert run_sync(box.run("print(1)", stdin="in", files={"./a/b.txt": "x"})).status is Status.OK
    assert box.calls[-1] == ("run", b"print(1)", "python", b"in", {"a/b.txt": b"x"}, Limits(timeout_s=3))
    own = Limits(timeout_s=5)
    run_sync(box.run(b"echo", language="bash", limits=own))
    assert box.calls[-1] == ("run", b"echo", "bash", None, {}, own)
    assert run_sync(box.session("bash", files={"f": "y"})) == "a session"
    assert box.calls[-1] == ("session", "bash", {"f": "y"}, Limits(timeout_s=3))


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda b: b.run("x", language="ruby"), SandboxConfigError,
         r"language must be 'python' or 'bash', got 'ruby'\. Pass language='python' or 'bash'; another interpreter runs from a bash program"),
        (lambda b: b.session("node"), SandboxConfigError, r"session kind must be 'python' or 'bash', got 'node'\. Pass kind='python'"),
        (lambda b: b.run("x", limits={"timeout_s": 1}), SandboxConfigError,
         r"limits must be a Limits instance, got dict \(\{'timeout_s': 1\}\)\. Build one with agentrl\.sandboxes\.Limits\(timeout_s=\.\.\."),
        (lambda b: b.session("python", limits=5), SandboxConfigError, r"limits must be a Limits instance, got int \(5\)"),
        (lambda b: b.run("x", stdin=3), SandboxConfigError, r"stdin must be bytes, str or None, got int"),
        (lambda b: b.run(42), SandboxConfigError, r"code must be str or bytes, got int"),
        (lambda b: b.run("x", files={"../up": "x"}), UnsafePathError, r"contains '\.\.'"),
        (lambda b: b.session("bash", files={"/etc/x": "x"}), UnsafePathError, r"absolute"),
    ],
)
def test_bad_arguments_are_refused_before_the_backend_runs(call, error, words):
    box = Recording()
    with pytest.raises(error, match=words):
        run_sync(call(box))
    assert box.calls == []


def test_closed_sandbox_and_bad_default_limits():
    box = Recording()
    run_sync(box.close())
    for call in (box.run("x"), box.session()):
        with pytest.raises(SandboxConfigError, match=r"this Recording is closed; create a new one with get_sandbox\('recording'\)"):
            run_sync(call)
    assert box.calls == []
    with pytest.raises(SandboxConfigError, match="limits must be a Limits instance, got str"):
        Recording(limits="10s")
