"""A local Ray cluster shared by the tests of this folder (started once, 2 CPUs, no dashboard),
and the GuessNumber env of docs/add_env.md as a file Ray workers import (``run.imports``)."""

from __future__ import annotations

import logging
import re

import pytest

from tests.conftest import DOC


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
        started = True
    yield ray
    if started:
        ray.shutdown()


SLOW_ENV = """

import asyncio as _asyncio


class SlowGuessNumberEnv(GuessNumberEnv):
    \"\"\"GuessNumber whose every step takes ``step_delay_s`` (episodes long enough to be
    interrupted on purpose).\"\"\"

    def __init__(self, *, step_delay_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.step_delay_s = step_delay_s

    async def _astep(self, action):
        await _asyncio.sleep(self.step_delay_s)
        return await super()._astep(action)


register_env("SlowGuessNumber", SlowGuessNumberEnv, description="GuessNumber with slow steps (tests)")
"""


@pytest.fixture(scope="session")
def guess_env_file(tmp_path_factory, guess_env_id) -> str:
    """docs/add_env.md's env (agentrl/GuessNumber-v0) plus a slow variant
    (agentrl/SlowGuessNumber-v0) as a .py file: Ray workers are separate processes and import
    it through ``run.imports``. Imported here too, so the driver knows both ids."""
    from agentrl.config import import_modules

    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    path = tmp_path_factory.mktemp("envs") / "guess_number_doc.py"
    path.write_text(code + SLOW_ENV)
    import_modules([str(path)])
    return str(path)
