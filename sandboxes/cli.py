"""``agentrl sandbox ...``: the adversarial self-test, a debugging ``run`` and ``health``.

    agentrl sandbox selftest [--backend bwrap] [--only 'fork*,15'] [--json out.json]
    agentrl sandbox run [--backend bwrap] [--language bash] [--timeout 5] 'print(1)'
    agentrl sandbox health [--backend docker]

``selftest`` prints one table row per attack and exits 1 if any attack was not contained, 2
for bad arguments (unknown backend or attack pattern), 3 when the backend cannot run here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .registry import DEFAULT_BACKEND, available_backends, get_sandbox
from .runtime import run_sync
from .types import BackendUnavailableError, Limits, SandboxConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sandbox", help="sandboxed code execution: self-test, run, health")
    sub = p.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND")
    backends = ", ".join(available_backends())

    st = sub.add_parser("selftest", help="run the adversarial suite against a backend")
    st.add_argument("--backend", default=DEFAULT_BACKEND, help=f"one of: {backends} (default {DEFAULT_BACKEND})")
    st.add_argument("--only", default=None, help="comma-separated globs of attack names or group numbers (the # column)")
    st.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    st.set_defaults(func=_selftest)

    rn = sub.add_parser("run", help="run one program in a fresh sandbox and print the result")
    rn.add_argument("code", nargs="?", help="program text (or use --file)")
    rn.add_argument("--file", "-f", default=None, help="read the program from this file ('-' = stdin)")
    rn.add_argument("--backend", default=DEFAULT_BACKEND, help=f"one of: {backends}")
    rn.add_argument("--language", choices=["python", "bash"], default="python")
    rn.add_argument("--timeout", type=float, default=None, help="timeout_s")
    rn.add_argument("--memory", type=int, default=None, help="memory_limit_mb")
    rn.set_defaults(func=_run)

    hl = sub.add_parser("health", help="check a backend can run a trivial program; print details")
    hl.add_argument("--backend", default=DEFAULT_BACKEND, help=f"one of: {backends}")
    hl.set_defaults(func=_health)

    from .images import add_build_image_parser

    add_build_image_parser(sub)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _open(name: str):
    """The backend, or (None, exit code) after printing why it cannot be used."""
    try:
        return get_sandbox(name), 0
    except SandboxConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None, 2
    except BackendUnavailableError as e:
        print(f"error: backend {name!r} is unavailable: {e}", file=sys.stderr)
        return None, 3


def _selftest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .selftest import run_suite, select_attacks

    try:
        attacks = select_attacks(args.only)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sandbox, code = _open(args.backend)
    if sandbox is None:
        return code
    console = Console(width=None if sys.stdout.isatty() else 160)
    health = run_sync(sandbox.health())
    console.print(
        f"[bold]agentrl sandbox selftest[/] backend={args.backend} mode={health.get('mode', '?')} "
        f"attacks={len(attacks)} healthy={health.get('ok')}"
    )

    def progress(row) -> None:
        mark = "[green]PASS[/]" if row.passed else "[red]FAIL[/]"
        console.print(f"  {mark} {row.number:>2} {row.attack:<22} {row.status:<15} {row.wall_time_s:7.3f} s")

    t0 = time.monotonic()
    try:
        rows = run_sync(run_suite(sandbox, only=args.only, progress=progress))
    finally:
        run_sync(sandbox.close())
    table = Table(title=f"adversarial suite: {args.backend} ({health.get('mode', '?')})", show_lines=False)
    for col in ("#", "attack", "status", "wall s", "result", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r.number), r.attack, r.status, f"{r.wall_time_s:.3f}",
                      "[green]PASS[/]" if r.passed else "[red]FAIL[/]", r.detail[:160])
    console.print(table)
    failed = [r.attack for r in rows if not r.passed]
    console.print(f"{len(rows) - len(failed)}/{len(rows)} attacks contained in {time.monotonic() - t0:.1f} s"
                  + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"backend": args.backend, "health": health, "rows": [r.to_dict() for r in rows]}, fh, indent=2)
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    if args.file:
        code = sys.stdin.read() if args.file == "-" else open(args.file).read()  # noqa: SIM115
    elif args.code is not None:
        code = args.code
    else:
        print("error: give the program as an argument or with --file PATH", file=sys.stderr)
        return 2
    changes = {}
    if args.timeout is not None:
        changes["timeout_s"] = args.timeout
    if args.memory is not None:
        changes["memory_limit_mb"] = args.memory
    try:
        limits = Limits(**changes)
    except SandboxConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sandbox, code_ = _open(args.backend)
    if sandbox is None:
        return code_
    try:
        result = run_sync(sandbox.run(code, language=args.language, limits=limits))
    finally:
        run_sync(sandbox.close())
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    summary = {k: v for k, v in result.to_dict().items() if k not in ("stdout", "stderr")}
    print(json.dumps(summary, default=str), file=sys.stderr)
    return 0 if result.ok else 1


def _health(args: argparse.Namespace) -> int:
    sandbox, code = _open(args.backend)
    if sandbox is None:
        return code
    try:
        health = run_sync(sandbox.health())
    finally:
        run_sync(sandbox.close())
    print(json.dumps(health, indent=2, default=str))
    return 0 if health.get("ok") else 1
