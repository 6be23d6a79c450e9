"""Tools: typed Python functions with docstrings, exposed as OpenAI function-calling schemas.

Write a tool as a method of your env (or any function) with type hints and a Google-style
docstring; :func:`json_schema` turns it into the OpenAI function-calling schema (the format
``transformers.utils.get_json_schema`` produces and chat templates render; that function is
not used because it imports torch, which ``agentrl.envs`` must not), so what the model sees
and what we validate agree::

    def shell(self, command: str) -> str:
        \"\"\"Run a shell command in the episode's sandbox.

        Args:
            command: the bash command line to run
        \"\"\"

A tool returns a ``str`` (the observation) or a :class:`ToolOutput` when it also gives a
reward, ends the episode, or reports a sandbox status. Tools may be ``async``; sync tools run
in a thread so one slow tool never blocks other envs' steps.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import types
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}

# Sync tools (sqlite, the ScienceWorld JVM bridge, ...) run here so the event loop stays free.
_EXECUTOR = ThreadPoolExecutor(max_workers=64, thread_name_prefix="agentrl-tool")


@dataclass
class ToolOutput:
    """What a tool returns when a plain string is not enough.

    Attributes:
        content: the observation text shown to the model.
        reward: reward earned by this call (added to the step's reward).
        terminated: True ends the episode (a final answer was submitted, the goal reached).
        status: "ok", or a failure class counted in info (a sandbox ``Status`` value such as
            "timeout", or "tool_error").
        sandbox: the sandbox result's dict when the call ran code (status, timings).
        info: extra entries merged into the step's info dict.
    """

    content: str
    reward: float = 0.0
    terminated: bool = False
    status: str = "ok"
    sandbox: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


_PY_TO_JSON: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object", type(None): "null"}


def _type_schema(tp: Any, where: str) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if tp in _PY_TO_JSON:
        return {"type": _PY_TO_JSON[tp]}
    if origin is typing.Literal:
        values = list(typing.get_args(tp))
        return {"type": _PY_TO_JSON[type(values[0])], "enum": values}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = [_type_schema(a, where) for a in args]
        out = inner[0] if len(inner) == 1 else {"type": [i["type"] for i in inner]}
        if len(args) < len(typing.get_args(tp)):
            out = {**out, "nullable": True}
        return out
    if origin in (list, tuple, set):
        args = typing.get_args(tp)
        return {"type": "array", **({"items": _type_schema(args[0], where)} if args and args[0] is not Ellipsis else {})}
    if origin is dict:
        return {"type": "object"}
    raise TypeError(f"{where}: unsupported type {tp!r}; use str, int, float, bool, list[...], dict, Literal[...] or Optional[...]")


def json_schema(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """The OpenAI function-calling schema of a typed function with a Google-style docstring.

    Raises TypeError/ValueError naming the function and parameter when a parameter lacks a
    type hint or an ``Args:`` description, so every tool the model sees is documented.
    """
    fname = name or fn.__name__
    doc = inspect.getdoc(fn) or ""
    if not doc.strip():
        raise ValueError(f"tool {fname!r} has no docstring; write one with a summary line and an Args: section")
    summary, _, rest = doc.partition("\nArgs:")
    descriptions: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        m = re.match(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if m and (current is None or len(line) - len(line.lstrip()) <= 8):
            current = m.group(1)
            descriptions[current] = m.group(2).strip()
        elif re.match(r"^\S", line):  # another section (Returns:, Raises:)
            current = None
            if line.strip() and not line.startswith(" "):
                break
        elif current and line.strip():
            descriptions[current] += " " + line.strip()
    hints = typing.get_type_hints(fn)
    props: dict[str, Any] = {}
    required = []
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if pname not in hints:
            raise TypeError(f"tool {fname!r}: parameter {pname!r} has no type hint")
        if pname not in descriptions:
            raise ValueError(f"tool {fname!r}: parameter {pname!r} is not described in the docstring's Args: section")
        props[pname] = {**_type_schema(hints[pname], f"tool {fname!r} parameter {pname!r}"), "description": descriptions[pname]}
        if param.default is inspect.Parameter.empty:
            required.append(pname)
    parameters: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        parameters["required"] = required
    return {"type": "function", "function": {"name": fname, "description": " ".join(summary.split()), "parameters": parameters}}


class Tool:
    """A callable with an OpenAI function-calling schema and argument validation."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None) -> None:
        self.fn = fn
        schema = json_schema(fn, name)
        self.schema: dict[str, Any] = schema
        self.name: str = schema["function"]["name"]
        self.is_async = inspect.iscoroutinefunction(fn)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.schema["function"]["parameters"]

    def validate(self, arguments: dict[str, Any]) -> list[str]:
        """Errors in ``arguments`` against the schema (missing, unknown, wrong type)."""
        props = self.parameters.get("properties", {})
        errors = []
        for req in self.parameters.get("required", []):
            if req not in arguments:
                errors.append(f"missing required argument {req!r}")
        for key, value in arguments.items():
            if key not in props:
                errors.append(
                    f"unknown argument {key!r}; {self.name} takes {sorted(props) or 'no arguments'}"
                )
                continue
            expected = props[key].get("type")
            types = expected if isinstance(expected, list) else [expected]
            allowed = tuple(t for name in types if name in _JSON_TYPES for t in _JSON_TYPES[name])
            if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
                errors.append(
                    f"argument {key!r} must be of type {expected}, got {type(value).__name__} {value!r:.60}"
                )
            enum = props[key].get("enum")
            if enum is not None and value not in enum:
                errors.append(f"argument {key!r} must be one of {enum}, got {value!r:.60}")
        return errors

    async def __call__(self, **arguments: Any) -> Any:
        if self.is_async:
            return await self.fn(**arguments)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_EXECUTOR, lambda: self.fn(**arguments))


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Mark a method as a tool of a :class:`~agentrl.envs.base.ToolEnv` (optionally renamed).

    Marked methods are collected by ``ToolEnv.tools()`` in definition order.
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__agentrl_tool__ = name or f.__name__  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark
