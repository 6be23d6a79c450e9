"""Envs for the failure-containment tests, written to a .py file with the env of
docs/add_env.md so Ray workers can import them (``run.imports``):

- ``agentrl/SandboxedGuessNumber-v0``: GuessNumber whose every step first runs a command in
  the episode's bash sandbox session, so a killed sandbox is felt at the next step whatever the
  model wrote (``SandboxError`` out of ``step``: failure kind ``sandbox_error``).
- ``agentrl/FlakyGuessNumber-v0``: GuessNumber whose ``step`` raises on every ``raise_every``-th
  call of an instance: the small plugin with a bug that a failure must not end training for.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import DOC

FAULT_ENVS = '''


class SandboxedGuessNumberEnv(GuessNumberEnv):
    """GuessNumber that logs every turn in a bash sandbox session before answering."""

    async def setup(self, task):
        self._session = await self.open_session("bash")

    async def teardown(self):
        session, self._session = getattr(self, "_session", None), None
        if session is not None:
            await session.close()

    async def _astep(self, action):
        result = await self._session.exec("echo turn >> turns.log")
        if result.status != "ok":
            raise RuntimeError(f"the turn log failed: {result.status} {result.detail}")
        return await super()._astep(action)


class FlakyGuessNumberEnv(GuessNumberEnv):
    """GuessNumber whose step raises on every ``raise_every``-th call of an instance."""

    def __init__(self, *, raise_every: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.raise_every, self._calls = raise_every, 0

    async def _astep(self, action):
        self._calls += 1
        if self.raise_every and self._calls % self.raise_every == 0:
            raise RuntimeError(f"flaky env: step call {self._calls} failed")
        return await super()._astep(action)


register_env("SandboxedGuessNumber", SandboxedGuessNumberEnv, description="GuessNumber with a sandbox session per episode (tests)")
register_env("FlakyGuessNumber", FlakyGuessNumberEnv, description="GuessNumber whose step raises 1 call in raise_every (tests)")
'''


def write_fault_envs(folder: Path) -> str:
    """Write docs/add_env.md's env plus the two envs above to ``folder``, import the file here
    (registering their ids), return its path."""
    from agentrl.config import import_modules

    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    path = Path(folder) / "fault_envs.py"
    path.write_text(code + FAULT_ENVS)
    import_modules([str(path)])
    return str(path)
