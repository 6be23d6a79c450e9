"""Deterministic one-token bugs for CodeRepair's ``start="buggy"`` mode, and the script that
verifies them and writes ``coderepair_bugs.json``.

A bug is one token of HumanEval's canonical solution replaced (:data:`SWAPS`): a comparison
flipped (``<`` / ``<=``, ``==`` / ``!=``, ...), an arithmetic operator changed (``+`` / ``-``,
``*`` / ``//`` / ``/`` / ``%``), ``and`` / ``or``, ``in`` / ``not in``, ``True`` / ``False``,
an integer literal moved by one (off-by-one), or a name swapped (``min`` / ``max``,
``sorted`` / ``reversed``, ``lower`` / ``upper``, ``ceil`` / ``floor``, ...) so one-line
solutions get a bug too. Candidates are listed in token order and shuffled with
``random.Random("agentrl/coderepair-bugs/<task_id>")``; the first ``MAX_TRIES`` are checked,
and one is kept only if the program still parses and the hidden tests *fail* it in the real
sandbox without a timeout (so the task is a repair, not a no-op, and grading stays fast).
Up to ``KEEP`` bugs are stored per problem, those the visible tests also catch first (the
agent can see the failure); the env uses the first. Problems with no such bug (listed under
``no_bug`` in the JSON) are left out of the buggy splits.

Regenerate (minutes; needs the bwrap sandbox)::

    python -m agentrl.envs.coderepair_bugs          # writes envs/coderepair_bugs.json
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import json
import random
import sys
import time
import tokenize
from typing import Any

SWAPS: dict[str, str] = {
    "<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==",
    "+": "-", "-": "+", "+=": "-=", "-=": "+=", "*": "//", "//": "/", "/": "//", "%": "//",
    "and": "or", "or": "and", "in": "not in", "True": "False", "False": "True",
    "min": "max", "max": "min", "any": "all", "all": "any", "sorted": "reversed",
    "lower": "upper", "upper": "lower", "swapcase": "upper", "startswith": "endswith",
    "endswith": "startswith", "ceil": "floor", "floor": "ceil", "int": "float", "md5": "sha1",
}
KEEP = 3
MAX_TRIES = 12


def candidate_bugs(problem: Any) -> list[dict[str, Any]]:
    """Every one-token mutation of the canonical solution that still parses, in a seeded order.

    Positions are (line, col) within ``problem.canonical_solution``, 0-based.
    """
    prompt_lines = problem.prompt.count("\n")
    source = problem.prompt + problem.canonical_solution
    found: list[dict[str, Any]] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    for tok in tokens:
        line = tok.start[0] - 1 - prompt_lines
        if line < 0:
            continue
        replacements: list[str] = []
        if tok.type in (tokenize.OP, tokenize.NAME) and tok.string in SWAPS:
            replacements.append(SWAPS[tok.string])
        elif tok.type == tokenize.NUMBER and tok.string.isdigit():
            value = int(tok.string)
            replacements.append(str(value + 1))
            if value > 0:
                replacements.append(str(value - 1))
        for new in replacements:
            bug = {"line": line, "col": tok.start[1], "old": tok.string, "new": new}
            if _parses(problem.prompt + apply_bug(problem.canonical_solution, bug)):
                found.append(bug)
    random.Random(f"agentrl/coderepair-bugs/{problem.task_id}").shuffle(found)
    return found


def apply_bug(canonical: str, bug: dict[str, Any]) -> str:
    from .coderepair import Bug

    return Bug(bug["line"], bug["col"], bug["old"], bug["new"]).apply(canonical)


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
        return True
    except SyntaxError:
        return False


async def verify(sandbox: Any, problem: Any, bug: dict[str, Any], limits: Any) -> dict[str, Any] | None:
    """The bug with ``visible_fails`` set if the hidden tests fail it (without a timeout), else None."""
    from agentrl.sandboxes import Status

    from .coderepair import grade, run_visible

    code = problem.prompt + apply_bug(problem.canonical_solution, bug)
    verdict = await grade(sandbox, problem, code, limits=limits)
    if verdict.passed or verdict.status not in (str(Status.OK), str(Status.RUNTIME_ERROR)) or "timed out" in verdict.detail:
        return None
    text, result = await run_visible(sandbox, problem, code, limits=limits)
    return {**bug, "visible_fails": result.status is Status.OK and "[FAIL]" in text}


async def bugs_for(sandbox: Any, problem: Any, limits: Any) -> list[dict[str, Any]]:
    kept = []
    for bug in candidate_bugs(problem)[:MAX_TRIES]:
        checked = await verify(sandbox, problem, bug, limits)
        if checked is not None:
            kept.append(checked)
        if sum(1 for b in kept if b["visible_fails"]) >= KEEP:
            break
    kept.sort(key=lambda b: not b["visible_fails"])  # stable: seeded order within each group
    return kept[:KEEP]


async def generate(backend: str = "bwrap", concurrency: int = 4) -> dict[str, Any]:
    from agentrl.sandboxes import Limits, get_sandbox

    from .coderepair import load_problems

    sandbox = get_sandbox(backend)
    limits = Limits(timeout_s=5.0)
    gate = asyncio.Semaphore(concurrency)

    async def one(problem: Any) -> tuple[str, list[dict[str, Any]]]:
        async with gate:
            return problem.task_id, await bugs_for(sandbox, problem, limits)

    try:
        results = await asyncio.gather(*(one(p) for p in load_problems()))
    finally:
        await sandbox.close()
    bugs = {tid: found for tid, found in results if found}
    missing = [tid for tid, found in results if not found]
    return {
        "about": "One-token bugs of HumanEval canonical solutions, verified to fail the hidden tests. "
        "Generated by python -m agentrl.envs.coderepair_bugs; see that module.",
        "bugs": bugs,
        "no_bug": missing,
    }


def main(argv: list[str] | None = None) -> int:
    from .coderepair import BUGS_FILE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="bwrap")
    parser.add_argument("--out", default=str(BUGS_FILE))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    data = asyncio.run(generate(args.backend))
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(data['bugs'])} problems with bugs, {len(data['no_bug'])} without ({data['no_bug']}); "
          f"{time.perf_counter() - t0:.0f} s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
