"""A small GuessNumber study (the doc env of docs/add_env.md) run once per session: first
interrupted, then resumed, so the tests can check resuming and the report of real runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BASE = """
run: {name: guess, output_dir: runs/unused, seed: 0, imports: [ENV_PY]}
model:
  path: runs/unused-model
  init: {arch: qwen2, template: chatml, vocab_size: 400, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, corpus_episodes: 10}
env: {id: agentrl/GuessNumber-v0, kwargs: {high: 4, max_turns: 4}, num_envs: 4}
rollout: {group_size: 2, tasks_per_step: 2, max_new_tokens: 24, max_total_tokens: 1024, tools_in_prompt: false}
sft: {enabled: true, episodes: 32, steps: 150, lr: 3.0e-3, batch_size: 8}
trainer: {total_steps: 3, lr: 1e-3, micro_batch_size: 2, checkpoint_every: 1, eval_episodes: 4}
logging: {progress: false, tensorboard: false}
algorithm: {estimator: grpo, loss: {name: ppo}, aggregation: token-mean}
"""

STUDY = f"""
study: guess_study
base: base.yaml
methods: [grpo, empg]
methods_dir: {ROOT / "configs" / "methods"}
seeds: [0, 1]
envs:
  high4: {{env.kwargs.high: 4}}
target_success: 0.5
final_window: 2
smoke:
  methods: [grpo]
  seeds: [0]
"""


@pytest.fixture(scope="session")
def guess_study(tmp_path_factory) -> Path:
    """A folder with the doc env as a .py file (run.imports), base.yaml and study.yaml."""
    folder = tmp_path_factory.mktemp("guess_study")
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "add_env.md").read_text(), re.DOTALL).group(1)
    (folder / "guess_env.py").write_text(code)
    (folder / "base.yaml").write_text(BASE.replace("ENV_PY", str(folder / "guess_env.py")))
    (folder / "study.yaml").write_text(STUDY)
    return folder / "study.yaml"


@pytest.fixture(scope="session")
def compared(guess_study, tmp_path_factory) -> dict:
    """Run the study three times into one folder: (1) interrupted by Ctrl-C inside the 3rd
    run, after its last checkpoint and before its summary.json; (2) resumed; (3) again, with
    everything finished. Records train invocations and learner updates of each pass."""
    import agentrl.train as train_module
    from agentrl.eval.compare import compare, train_run
    from agentrl.learner.learner import Learner

    out = tmp_path_factory.mktemp("guess_results") / "results"
    record: dict = {"out": out, "calls": [[], [], []], "updates": [0, 0, 0]}
    real_evaluate, real_update = train_module.evaluate, Learner.update

    with pytest.MonkeyPatch.context() as mp:
        for pass_index in range(3):
            calls = record["calls"][pass_index]

            def counting_update(self, batch, _i=pass_index):
                record["updates"][_i] += 1
                return real_update(self, batch)

            def train_fn(config, _calls=calls, _i=pass_index):
                _calls.append(config["run"]["output_dir"])
                if _i == 0 and len(_calls) == 3:
                    def interrupted(rollout, cfg, label):
                        if label == "after_rl":
                            raise KeyboardInterrupt
                        return real_evaluate(rollout, cfg, label)

                    mp.setattr(train_module, "evaluate", interrupted)
                return train_run(config)

            mp.setattr(Learner, "update", counting_update)
            try:
                result = compare(guess_study, out=out, train_fn=train_fn)
                record.setdefault("results", []).append(result)
            except KeyboardInterrupt:
                record["interrupted_run"] = calls[-1]
                record["interrupted_summary_exists"] = (Path(calls[-1]) / "summary.json").exists()
                record["interrupted_checkpoints"] = sorted(p.name for p in (Path(calls[-1]) / "checkpoints").iterdir())
            mp.setattr(train_module, "evaluate", real_evaluate)
            record.setdefault("mtimes", []).append({p: p.stat().st_mtime_ns for p in out.glob("runs/**/summary.json")})
    record["study_json"] = json.loads((out / "study.json").read_text())
    return record
