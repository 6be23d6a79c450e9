"""The modules of agentrl/eval import each other one way: no import cycle, counting imports
inside functions too (a cycle hidden in a function is still a cycle). The report builds on
results and plots; the plots build on results only."""

from __future__ import annotations

import ast
from pathlib import Path

import agentrl.eval

EVAL = Path(agentrl.eval.__file__).parent


def _imports(path: Path) -> set[str]:
    """The agentrl.eval modules ``path`` imports (relative or absolute, at any depth)."""
    names = {p.stem for p in EVAL.glob("*.py")}
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or module.startswith("agentrl.eval"):
                base = module.removeprefix("agentrl.eval").lstrip(".") if node.level == 0 else module
                if base:
                    out.add(base.split(".")[0])
                else:  # from . import x
                    out.update(a.name for a in node.names if a.name in names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[2] for a in node.names if a.name.startswith("agentrl.eval."))
    return out & names - {path.stem}


def test_eval_modules_have_no_import_cycle():
    graph = {p.stem: _imports(p) for p in EVAL.glob("*.py")}
    assert graph["report"] >= {"results", "report_plots"} and "report" not in graph["report_plots"]
    assert graph["report_plots"] & {"report", "compare", "cli"} == set()

    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, (*path, node))
        done.add(node)

    for module in sorted(graph):
        visit(module, ())
