"""Kill-and-resume (issue 5, acceptance 4): a run killed with SIGKILL and resumed continues from
its last checkpoint with no lost or repeated train_steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentrl.metrics import read_metrics

from .test_train_smoke import CONFIG

DRIVER = """
import sys
sys.path.insert(0, {root!r})
from tests.conftest import load_doc_env
load_doc_env()
from agentrl.config import load_config
from agentrl.train import train
train(load_config({cfg!r}))
"""


def _launch(tmp_path: Path, cfg: Path) -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=root, cfg=str(cfg)))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def test_sigkill_then_resume_has_no_lost_or_repeated_steps(tmp_path, guess_env_id):
    cfg = tmp_path / "c.yaml"
    text = CONFIG.replace("OUT", str(tmp_path / "run")).replace("MODEL", str(tmp_path / "model"))
    cfg.write_text(text.replace("total_steps: 2", "total_steps: 6").replace("sft: {enabled: true", "sft: {enabled: false"))
    run = tmp_path / "run"
    proc = _launch(tmp_path, cfg)
    deadline = time.time() + 600
    # wait until at least 2 train_steps are checkpointed, then kill hard mid-run
    while time.time() < deadline:
        ckpts = sorted((run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else []
        if ckpts and int(ckpts[-1].name[5:]) >= 2:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))
    assert 2 <= killed_at < 6
    proc = _launch(tmp_path, cfg)
    assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()[-3000:]
    steps = [r["train_step"] for r in read_metrics(run / "metrics.jsonl") if "loss/total" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (run / "checkpoints" / "step_000006" / "COMPLETE").exists()
