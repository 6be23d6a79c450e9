"""Tool-call parsers: assistant text in, tool calls (or what was wrong) out.

The default is the Hermes/Qwen format used by Qwen2.5/Qwen3 chat templates::

    I will list the files.
    <tool_call>
    {"name": "shell", "arguments": {"command": "ls"}}
    </tool_call>

Parsers never raise on model output: malformed text becomes ``ParseResult.errors`` entries
that the env turns into an observation telling the model what went wrong.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ToolCall:
    """One parsed call: ``name`` and JSON ``arguments`` (a dict), plus the raw text."""

    name: str
    arguments: dict[str, Any]
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ParseResult:
    """``calls`` in order of appearance; ``errors`` describe malformed calls (one per call);
    ``content`` is the text outside tool-call blocks (the model's reasoning / final words)."""

    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    content: str = ""


class ToolCallParser(Protocol):
    name: str

    def parse(self, text: str) -> ParseResult: ...

    def format(self, name: str, arguments: dict[str, Any]) -> str:
        """The assistant text that calls ``name`` with ``arguments`` (used by experts)."""
        ...


def _call_from_obj(obj: Any, raw: str) -> ToolCall | str:
    """A ToolCall from a decoded JSON object, or an error message saying what is wrong."""
    if not isinstance(obj, dict):
        return f"expected a JSON object with 'name' and 'arguments', got {type(obj).__name__}: {raw[:200]!r}"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return f"the tool call has no string 'name' field: {raw[:200]!r}"
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return f"'arguments' of {name!r} is a string that is not valid JSON ({e.msg})"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return f"'arguments' of {name!r} must be a JSON object, got {type(args).__name__}"
    return ToolCall(name=name, arguments=args, raw=raw)


class HermesParser:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes/Qwen).

    An opening tag without a closing one is reported as an error (a truncated generation);
    JSON errors are reported with the decoder's message and position.
    """

    name = "hermes"
    _block = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def parse(self, text: str) -> ParseResult:
        result = ParseResult()
        last = 0
        pieces = []
        for m in self._block.finditer(text):
            pieces.append(text[last : m.start()])
            last = m.end()
            body = m.group(1).strip()
            try:
                obj = json.loads(body)
            except json.JSONDecodeError as e:
                result.errors.append(
                    f"invalid JSON inside <tool_call>: {e.msg} at position {e.pos}: {body[:200]!r}"
                )
                continue
            call = _call_from_obj(obj, m.group(0))
            if isinstance(call, str):
                result.errors.append(call)
            else:
                result.calls.append(call)
        tail = text[last:]
        if "<tool_call>" in tail:
            result.errors.append(
                "found <tool_call> without a closing </tool_call>; close every call with </tool_call>"
            )
            tail = tail[: tail.index("<tool_call>")]
        pieces.append(tail)
        result.content = "".join(pieces).strip()
        return result

    def format(self, name: str, arguments: dict[str, Any]) -> str:
        return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class JSONParser:
    """The whole message is one JSON object ``{"name": ..., "arguments": ...}`` (or a list of
    them). For models fine-tuned on bare-JSON function calling."""

    name = "json"

    def parse(self, text: str) -> ParseResult:
        result = ParseResult()
        stripped = text.strip()
        if not stripped.startswith(("{", "[")):
            result.content = stripped
            return result
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as e:
            result.errors.append(f"invalid JSON tool call: {e.msg} at position {e.pos}")
            return result
        for item in obj if isinstance(obj, list) else [obj]:
            call = _call_from_obj(item, json.dumps(item))
            (result.errors if isinstance(call, str) else result.calls).append(call)  # type: ignore[arg-type]
        return result

    def format(self, name: str, arguments: dict[str, Any]) -> str:
        return json.dumps({"name": name, "arguments": arguments})


PARSERS: dict[str, type] = {"hermes": HermesParser, "json": JSONParser}


def register_parser(name: str, cls: type) -> None:
    """Add a parser class (with ``parse`` and ``format``) under ``name``."""
    PARSERS[name] = cls


def get_parser(name: str) -> ToolCallParser:
    if name not in PARSERS:
        close = difflib.get_close_matches(name, PARSERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown tool-call parser {name!r}; known parsers: {', '.join(sorted(PARSERS))}.{hint}"
        )
    return PARSERS[name]()
