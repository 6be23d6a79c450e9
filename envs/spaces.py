"""Gymnasium spaces for chat text: free unicode strings and lists of chat messages.

``gymnasium.spaces.Text`` restricts strings to a fixed charset (alphanumerics by default), which
model output and tool output violate, so text envs need their own spaces.
``gymnasium.utils.env_checker.check_env`` only needs ``contains``, ``sample`` and ``seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

ROLES = ("system", "user", "assistant", "tool")
_SAMPLE_ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789 <>{}[]\":,_./\n") + ["é", "—", "\u0000"]


class UnicodeText(spaces.Space[str]):
    """Any ``str`` up to ``max_length`` characters (default: no limit)."""

    def __init__(self, max_length: int | None = None, seed: int | np.random.Generator | None = None):
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and (self.max_length is None or len(x) <= self.max_length)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n = int(self.np_random.integers(0, min(self.max_length or 200, 200) + 1))
        idx = self.np_random.integers(0, len(_SAMPLE_ALPHABET), size=n)
        return "".join(_SAMPLE_ALPHABET[i] for i in idx)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"UnicodeText(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, UnicodeText) and other.max_length == self.max_length


class Messages(spaces.Space[tuple]):
    """A tuple of chat messages, each a dict with ``role`` (system/user/assistant/tool) and
    ``content`` (str). Tool messages may also carry ``name``."""

    def __init__(self, seed: int | np.random.Generator | None = None):
        super().__init__(shape=None, dtype=None, seed=seed)

    def contains(self, x: Any) -> bool:
        if not isinstance(x, (tuple, list)):
            return False
        for m in x:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                return False
            if not set(m) <= {"role", "content", "name"}:
                return False
        return True

    def sample(self, mask: Any = None, probability: Any = None) -> tuple:
        text = UnicodeText(seed=int(self.np_random.integers(2**31)))
        n = int(self.np_random.integers(1, 4))
        return tuple({"role": ROLES[int(self.np_random.integers(0, 4))], "content": text.sample()} for _ in range(n))

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "Messages()"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Messages)
