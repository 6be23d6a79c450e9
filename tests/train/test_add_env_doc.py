"""docs/add_env.md, walked as a newcomer walks it: the page's env (``guess_number.py``) and
training config (``guess_number.yaml``) are written from the page into a folder laid out like a
checkout's root, and its commands run through the real CLI in subprocesses, in order: check the
env, train two runs, evaluate one, compare both. Sizes are shrunk by command-line overrides
only (the same ones for both runs); nothing else differs from the page."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "add_env.md"
TINY = ["model.init.vocab_size=300", "model.init.hidden_size=32", "model.init.num_layers=1", "model.init.num_heads=2",
        "model.init.num_kv_heads=1", "model.init.corpus_episodes=8", "sft.episodes=16", "sft.steps=10", "sft.warmup_steps=2",
        "env.num_envs=4", "rollout.group_size=2", "rollout.tasks_per_step=2", "rollout.max_new_tokens=24",
        "trainer.total_steps=1", "trainer.warmup_steps=0", "trainer.micro_batch_size=4", "trainer.checkpoint_every=1",
        "trainer.eval_episodes=2", "logging.progress=false", "logging.tensorboard=false"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def page_commands() -> list[list[str]]:
    """The ``agentrl ...`` commands of the page's bash blocks, continuation lines joined,
    comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("agentrl "):
                commands.append(shlex.split(line))
    return commands


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "agentrl.cli", *cmd[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_the_newcomer_path_from_a_new_env_to_a_comparison(tmp_path):
    text = DOC.read_text()
    env_code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    config = re.search(r"```yaml\n(# guess_number\.yaml.*?)```", text, re.DOTALL).group(1)
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "configs").symlink_to(ROOT / "configs")  # the config's base: configs/quickstart.yaml
    (root / "guess_number.py").write_text(env_code)
    (root / "guess_number.yaml").write_text(config)

    commands = page_commands()
    verbs = [c[1] for c in commands]
    assert verbs == ["envs", "envs", "train", "train", "eval", "compare"], verbs
    run(commands[0], root)  # envs check: gymnasium checker, determinism, ..., expert reaches full reward
    for cmd in commands[2:4]:
        run([*cmd, *TINY], root)
    for name in ("guess_number", "guess_clip_higher"):
        saved = yaml.safe_load((root / "runs" / name / "config.yaml").read_text())
        assert saved["env"]["id"] == "agentrl/GuessNumber-v0"
        assert saved["env"]["kwargs"] == {"high": 16, "max_turns": 6}  # the page's; no ShellQuest option inherited
        rows = [json.loads(line) for line in (root / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["train_step"] for r in rows if "loss/total" in r] == [1]
    out = run([*commands[4], "--episodes", "2"], root)
    assert "success" in out
    out = run(commands[5], root)
    assert "guess_number" in out and "guess_clip_higher" in out
