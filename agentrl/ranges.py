"""One notation for valid numeric ranges, shared by the experiment config (``agentrl.config``
RANGES) and the methods' options (``agentrl.algorithms.registry``): pure Python, so neither
side imports the other's dependencies (yaml; torch)."""

from __future__ import annotations

import math


def range_problem(value: float, spec: str, where: str, nullable: bool = False) -> str | None:
    """None when ``value`` lies in ``spec``, else the one-line message (``trainer.lr must be > 0,
    got -0.0001``). ``spec``: ``">= 0"``, ``"> 0"``, ``"<= 1"``, ``"< 1"``, ``"[0, 1]"``,
    ``"(0, 1]"``, ``"[0, 1)"``, ``"(0, 1)"``, or ``"any"`` (any finite number); text after ``;``
    is the reason, added to the message. nan and inf are always outside. Used for the config's
    :data:`RANGES` and for method options (``agentrl.algorithms.registry``)."""
    rule, _, why = (part.strip() for part in spec.partition(";"))
    if rule == "any":
        ok, text = True, "a finite number"
    elif rule[0] in "[(":
        lo, hi = (float(x) for x in rule[1:-1].split(","))
        ok = (value >= lo if rule[0] == "[" else value > lo) and (value <= hi if rule[-1] == "]" else value < hi)
        text = f"in {rule}"
    else:
        op, bound = rule.split()
        b = float(bound)
        ok = {">=": value >= b, ">": value > b, "<=": value <= b, "<": value < b}[op]
        text = rule
    finite = math.isfinite(value)
    if ok and finite:
        return None
    text = text if finite or rule == "any" else f"a finite number {text}"
    return f"{where} must be {text}{' or null' if nullable else ''}, got {value!r}" + (f" ({why})" if why else "")
