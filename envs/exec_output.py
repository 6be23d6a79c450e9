"""How code-running tools show a sandbox result to the model (shared by the code envs)."""

from __future__ import annotations

from typing import Any

from agentrl.sandboxes import ExecResult, Status


def format_exec(result: ExecResult) -> str:
    """The program's stdout, then its stderr, then what went wrong (timeout, limits, restart).

    Deterministic for a deterministic program: no timings or pids in the text.
    """
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.status is Status.RUNTIME_ERROR and not result.stderr and result.exit_code not in (None, 0):
        parts.append(f"[exit code {result.exit_code}]")
    if result.truncated:
        parts.append("[output cut at the sandbox's cap]")
    if result.status is Status.TIMEOUT:
        parts.append("[timed out: the wall-clock limit was hit]")
    elif result.status not in (Status.OK, Status.RUNTIME_ERROR):
        parts.append(f"[{result.status}: {result.detail}]" if result.detail else f"[{result.status}]")
    if result.extra.get("restarted"):
        parts.append("[the session was restarted: variables and files are gone]")
    return "\n".join(parts) if parts else "(no output)"


def exec_info(result: ExecResult) -> dict[str, Any]:
    """The sandbox part of a tool call's info (status and timings; see ``ToolOutput.sandbox``)."""
    return {"status": str(result.status), "wall_time_s": result.wall_time_s, "cpu_time_s": result.cpu_time_s}
