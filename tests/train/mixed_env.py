"""A GuessNumber variant with episodes of mixed, known lengths for the async tests: each task
is cut after ``1 + task_index % max_len`` turns (the tiny model rarely guesses right with a
large ``high``), and every step takes ``step_delay_s``. Written to a .py file with the env of
docs/add_env.md so Ray workers can import it (``run.imports``)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import DOC

MIXED_ENV = '''

import asyncio as _asyncio


class MixedGuessNumberEnv(GuessNumberEnv):
    """GuessNumber cut after ``1 + task_index % max_len`` turns, each taking ``step_delay_s``."""

    def __init__(self, *, max_len: int = 6, step_delay_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_len, self.step_delay_s = max_len, step_delay_s

    async def setup(self, task):
        self.max_turns = 1 + task.index % self.max_len

    async def _astep(self, action):
        if self.step_delay_s:
            await _asyncio.sleep(self.step_delay_s)
        return await super()._astep(action)


register_env("MixedGuessNumber", MixedGuessNumberEnv, description="GuessNumber with mixed episode lengths (tests)")
'''


def write_mixed_env(folder: Path) -> str:
    """Write docs/add_env.md's env plus MixedGuessNumber to ``folder``, import it here
    (registers agentrl/GuessNumber-v0 and agentrl/MixedGuessNumber-v0), return the path."""
    from agentrl.config import import_modules

    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    path = Path(folder) / "mixed_guess_number.py"
    path.write_text(code + MIXED_ENV)
    import_modules([str(path)])
    return str(path)
