"""``agentrl envs list | check ID | play ID``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, bools, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            print(f"error: option {pair!r} must look like key=value (e.g. max_turns=30)", file=sys.stderr)
            raise SystemExit(2)
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _import_user_modules(args: argparse.Namespace) -> bool:
    """Import the ``--import`` modules / .py files (envs registered outside agentrl) with the
    helper of ``run.imports`` and ``agentrl eval --import``; False (after an ``error:`` line)
    when one cannot be imported."""
    from agentrl.config import ConfigError, import_modules

    try:
        import_modules(getattr(args, "imports", None) or [], source="--import")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True


def _make_or_error(env_id: str, options: dict[str, Any]) -> Any:
    """The env, or None after one ``error:`` line when the id is unknown or an option is
    unknown or invalid (the constructor's ValueError/TypeError; ``agentrl -v`` logs the
    traceback)."""
    import gymnasium as gym

    from . import EnvOptionError, make

    try:
        return make(env_id, **options)
    except (gym.error.NameNotFound, EnvOptionError) as e:
        print(f"error: {e}", file=sys.stderr)
    except (ValueError, TypeError) as e:
        log.debug("constructing %s failed", env_id, exc_info=True)
        shown = f" with options {options}" if options else ""
        print(f"error: cannot make {env_id}{shown}: {e} (agentrl -v ... shows the traceback)", file=sys.stderr)
    return None


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import DESCRIPTIONS, list_envs

    if not _import_user_modules(args):
        return 2

    table = Table(title="agentrl environments")
    table.add_column("id")
    table.add_column("description")
    for eid in list_envs():
        table.add_row(eid, DESCRIPTIONS.get(eid, ""))
    Console().print(table)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .checks import CHECKS, run_checks

    if not _import_user_modules(args):
        return 2
    if args.tasks < 1:
        print(f"error: --tasks must be >= 1 (expert tasks per split), got {args.tasks}", file=sys.stderr)
        return 2
    for name in args.only or []:
        if name not in CHECKS:
            import difflib

            close = difflib.get_close_matches(name, list(CHECKS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            print(f"error: --only: unknown check {name!r}.{hint} Checks: {', '.join(CHECKS)}", file=sys.stderr)
            return 2
    options = _parse_options(args.option)
    env = _make_or_error(args.env_id, options)  # a wrong id or option: one line, not every check failing
    if env is None:
        return 2
    env.close()
    results = run_checks(args.env_id, only=args.only, n_tasks=args.tasks, **options)
    table = Table(title=f"agentrl envs check {args.env_id}")
    for col in ("check", "result", "time (s)"):
        table.add_column(col, no_wrap=True)
    table.add_column("detail", overflow="fold")  # whole, wrapped to the terminal: never cut
    for r in results:
        # a failure's first line here, its traceback after the table; Text: no markup in details
        detail = r.detail if r.passed else (r.detail.splitlines() or [""])[0]
        table.add_row(r.name, "[green]pass" if r.passed else "[red]FAIL", f"{r.wall_time_s:.2f}", Text(detail))
    console = Console()
    console.print(table)
    for r in results:
        if not r.passed:
            console.print(f"[red]{r.name}[/red]:")
            console.print(Text(r.detail))
    return 0 if all(r.passed for r in results) else 1


def cmd_play(args: argparse.Namespace) -> int:
    if not _import_user_modules(args):
        return 2
    env = _make_or_error(args.env_id, _parse_options(args.option))
    if env is None:
        return 2
    core = env.unwrapped
    if args.task is not None and hasattr(core, "num_tasks"):
        n = core.num_tasks(core.split)
        if not 0 <= args.task < n:
            print(f"error: --task {args.task} is out of range: {args.env_id} has {n} tasks in split {core.split!r} "
                  f"(valid: 0..{n - 1})", file=sys.stderr)
            env.close()
            return 2
    try:
        obs, info = env.reset(seed=args.seed, options={"task_index": args.task} if args.task is not None else None)
    except (IndexError, ValueError) as e:  # an env outside ToolEnv refusing the task index
        log.debug("reset of %s failed", args.env_id, exc_info=True)
        print(f"error: cannot reset {args.env_id} (--task {args.task}): {e} (agentrl -v ... shows the traceback)", file=sys.stderr)
        env.close()
        return 2
    print(f"== {info['task_id']}  (max_turns {info['max_turns']})")
    print("tools: " + ", ".join(t["function"]["name"] for t in info["tools"]))
    print("Type a tool call as `name {json args}` (e.g. shell {\"command\": \"ls\"}), raw assistant text, "
          "`:expert` for the expert's move, `:tools` for schemas, `:quit` to stop.")
    expert = core.expert()
    for m in obs:
        print(f"[{m['role']}] {m['content']}")
    total = 0.0
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if line in (":quit", ":q"):
            break
        if line == ":tools":
            print(json.dumps(info["tools"], indent=2))
            continue
        if line == ":expert":
            action = expert(obs)
            print(action)
        elif line and " " in line and line.split(" ", 1)[0] in core.tools and line.split(" ", 1)[1].lstrip().startswith("{"):
            name, raw = line.split(" ", 1)
            try:
                action = core.call(name, **json.loads(raw))
            except json.JSONDecodeError as e:
                print(f"(not valid JSON arguments: {e}; sending the line as raw text)")
                action = line
        elif line in core.tools:
            action = core.call(line)
        else:
            action = line
        obs, reward, terminated, truncated, step_info = env.step(action)
        total += reward
        for m in obs:
            print(f"[{m['role']}{'/' + m['name'] if m.get('name') else ''}] {m['content']}")
        print(f"(reward {reward:+.3f}, return {total:.3f}, turn {step_info['turn']}, errors {sum(step_info['errors'].values())})")
        if terminated or truncated:
            print(f"== episode over: {'terminated' if terminated else 'truncated'}, success={step_info.get('success')}")
            break
    env.close()
    return 0


def _add_import_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE.py",
                   help="module or .py file that registers envs (repeatable), e.g. --import guess_number.py")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("envs", help="list, check and play environments")
    sub = p.add_subparsers(dest="envs_command", metavar="SUBCOMMAND", required=True)
    ls = sub.add_parser("list", help="registered env ids with descriptions")
    _add_import_option(ls)
    ls.set_defaults(func=cmd_list)
    ck = sub.add_parser("check", help="run every env check (gymnasium checker, determinism, expert, split overlap, ...)")
    ck.add_argument("env_id")
    ck.add_argument("--tasks", type=int, default=3, help="expert tasks per split (default 3)")
    ck.add_argument("--only", nargs="*", help="run only these checks")
    ck.add_argument("-o", "--option", action="append", default=[], help="env option key=value (repeatable)")
    _add_import_option(ck)
    ck.set_defaults(func=cmd_check)
    pl = sub.add_parser("play", help="play an env in the terminal, typing tool calls")
    pl.add_argument("env_id")
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--task", type=int, default=None, help="task index (default: drawn from the seed)")
    pl.add_argument("-o", "--option", action="append", default=[], help="env option key=value (repeatable)")
    _add_import_option(pl)
    pl.set_defaults(func=cmd_play)

