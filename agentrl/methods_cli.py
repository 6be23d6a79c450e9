"""``agentrl methods list``: every registered component, per kind, with a one-line description
and its paper reference. Torch is imported only when the command runs."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register ``agentrl methods`` (see :mod:`agentrl.cli`)."""
    parser = subparsers.add_parser("methods", help="list the registered methods and components",
                                   description="The methods library: estimators, losses, token masks, shaping, "
                                               "controllers, aggregations and KL estimators, by registered name.")
    actions = parser.add_subparsers(dest="methods_action", metavar="ACTION")
    lst = actions.add_parser("list", help="print each registered component with its description and paper")
    lst.add_argument("--kind", help="only this kind (estimators, losses, token_masks, shaping, controllers, "
                                    "aggregations, kl)")
    lst.add_argument("--options", action="store_true", help="also print each component's options and defaults")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                     help="module or .py file that registers components (as run.imports); repeatable")
    lst.set_defaults(func=run_list)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def collect(kind: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{kind: [{name, summary, paper, source, options}]}`` from the registries."""
    import agentrl.algorithms  # noqa: F401  (importing the package registers every component)

    from agentrl.algorithms.registry import REGISTRIES, UnknownNameError, suggest

    if kind is not None and kind not in REGISTRIES:
        raise UnknownNameError(f"unknown kind {kind!r}.{suggest(kind, list(REGISTRIES))} Known kinds: {', '.join(REGISTRIES)}.")
    out: dict[str, list[dict[str, Any]]] = {}
    for k, reg in REGISTRIES.items():
        if kind is None or k == kind:
            out[k] = [{"name": e.name, "summary": e.summary, "paper": e.paper, "source": e.source,
                       "options": e.options()} for e in reg]
    return out


def run_list(args: argparse.Namespace) -> int:
    from agentrl.config import ConfigError, import_modules

    try:
        import_modules(args.imports, source="--import")
        data = collect(args.kind)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}")
        return 2
    if args.json:
        print(json.dumps(data, indent=2, default=repr))
        return 0
    for kind, entries in data.items():
        print(f"{kind}:")
        width = max((len(e["name"]) for e in entries), default=0)
        for e in entries:
            print(f"  {e['name']:<{width}}  {e['summary']}")
            print(f"  {'':<{width}}  paper: {e['paper']}")
            if args.options and e["options"]:
                opts = ", ".join(f"{k}={v!r}" for k, v in e["options"].items())
                print(f"  {'':<{width}}  options: {opts}")
        print()
    return 0
