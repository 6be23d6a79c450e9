"""The optional metrics sinks of agentrl/metrics.py (docs/logging.md): TensorBoard's "not
installed" line once per process, and W&B runs written in offline mode and read back from the
run's own record file, so what reaches W&B (settings, config, metrics at their train_step) is
checked without a server or an account."""

from __future__ import annotations

import json
import logging
import math
import struct
import sys
from pathlib import Path

import pytest

from agentrl.config import ConfigError, load_config

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def test_the_tensorboard_not_installed_line_is_logged_once_per_process(tmp_path, monkeypatch, caplog):
    from agentrl import metrics

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setattr(metrics, "_said_no_tensorboard", False)  # as in a fresh process
    with caplog.at_level(logging.INFO, logger="agentrl.metrics"):
        for name in ("a", "b", "c"):  # agentrl compare: several runs in one process
            metrics.MetricsLogger(tmp_path / name).close()
    lines = [r.getMessage() for r in caplog.records if r.name == "agentrl.metrics"]
    assert len(lines) == 1 and "TensorBoard is not installed" in lines[0] and "metrics.jsonl only" in lines[0], lines
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["a", "b", "c"]  # each logger still made its folder


# ----------------------------------------------------------------------------- W&B, offline
def _wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run, from its ``run-<id>.wandb`` file (wandb-core writes
    no config.yaml or wandb-summary.json offline; ``wandb sync`` uploads this file). The file is
    LevelDB's log format: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB
    blocks of chunks, each a 7-byte header (crc32c u32, length u16, type u8: 1 whole record,
    2 first, 3 middle, 4 last piece) and its bytes; a block's tail under 7 bytes is padding.
    Each record is a ``wandb_internal_pb2.Record`` protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B record file (starts {data[:7]!r})"
    records, pos, pieces, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def _read_run(run_dir: Path) -> dict:
    """run settings, config, history rows by _step and the final summary of one offline run."""
    out: dict = {"history": {}, "summary": {}}
    for r in _wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"] = {u.key: json.loads(u.value_json) for u in r.run.config.update}
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            out["history"][row["_step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "summary":
            out["summary"].update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update})
    return out


@pytest.fixture
def wandb_offline_dir(tmp_path, monkeypatch):
    """W&B with every file under tmp_path: WANDB_DIR for the runs; its settings and caches kept
    out of the home folder; no console capture (pytest owns stdout). The mode is left unset:
    the tests ask for offline through logging.wandb_mode."""
    import wandb  # the [test] extra installs it: pip install -e '.[test]'
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var, sub in (("WANDB_DIR", "wb"), ("WANDB_CONFIG_DIR", "wb-config"), ("WANDB_CACHE_DIR", "wb-cache"), ("WANDB_DATA_DIR", "wb-data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield tmp_path / "wb"
    wandb.teardown()  # stop the wandb-core process this test started


def _offline_runs(wb_dir: Path) -> list[Path]:
    """The offline runs under ``wb_dir``, read only after the wandb-core service has stopped:
    since wandb 0.31, ``run.finish()`` can return before the service has written the run's
    records to disk (on a loaded machine the file then lacked the run record: KeyError 'run'),
    and ``wandb.teardown()`` waits for the service to flush and exit."""
    import wandb

    wandb.teardown()
    return sorted((wb_dir / "wandb").glob("offline-run-*"))


def test_a_wandb_run_gets_the_settings_the_config_and_each_metric_at_its_train_step(tmp_path, wandb_offline_dir, caplog):
    from agentrl.metrics import MetricsLogger

    cfg = load_config(QUICKSTART, overrides=[
        "logging.wandb=true", "logging.wandb_mode=offline", "logging.wandb_project=entropy-study", "logging.wandb_entity=my-team",
        'logging.wandb_tags=["dapo", "ShellQuest-v0"]', "run.name=dapo-seed1", "trainer.lr=0.0003", "logging.progress=false",
    ])
    with caplog.at_level(logging.WARNING, logger="agentrl.metrics"):
        logger = MetricsLogger.for_run(tmp_path / "run", cfg)
        logger.log(0, {"eval/success": 0.125, "sft/expert_episodes": 64.0})
        logger.log(3, {"loss/total": 0.75, "rollout/success": 0.25, "policy/entropy": 1.5, "skipped": True, "note": "text"})
        logger.log(5, {"loss/total": -0.5, "rollout/success": 0.5})
        logger.close()
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # W&B was not disabled
    (run_dir,) = _offline_runs(wandb_offline_dir)
    assert not (tmp_path / "run" / "wandb").exists()  # WANDB_DIR wins over the run folder
    run = _read_run(run_dir)
    assert (run["run"].project, run["run"].entity, run["run"].display_name) == ("entropy-study", "my-team", "dapo-seed1")
    assert list(run["run"].tags) == ["dapo", "ShellQuest-v0"]
    # the resolved config, section by section, as agentrl wrote it to config.yaml
    assert run["config"]["trainer"]["lr"] == 0.0003 and run["config"]["run"]["name"] == "dapo-seed1"
    assert run["config"]["logging"]["wandb_project"] == "entropy-study" and run["config"]["rollout"]["group_size"] == cfg.rollout.group_size
    # one history row per train_step, at that step; numbers only (bools and strings stay in metrics.jsonl)
    assert run["history"] == {
        0: {"eval/success": 0.125, "sft/expert_episodes": 64},
        3: {"loss/total": 0.75, "rollout/success": 0.25, "policy/entropy": 1.5},
        5: {"loss/total": -0.5, "rollout/success": 0.5},
    }
    assert {k: run["summary"][k] for k in ("loss/total", "rollout/success", "policy/entropy")} == {"loss/total": -0.5, "rollout/success": 0.5, "policy/entropy": 1.5}
    assert any(r.WhichOneof("record_type") == "exit" for r in _wandb_records(run_dir))  # close() finished the run


def test_two_open_loggers_in_one_process_write_two_wandb_runs(tmp_path, wandb_offline_dir):
    """agentrl compare keeps one process; a logger's run must not end (or absorb) another's."""
    from agentrl.metrics import MetricsLogger

    cfg_a = load_config(QUICKSTART, overrides=["logging.wandb=true", "logging.wandb_mode=offline", "run.name=a"])
    cfg_b = load_config(QUICKSTART, overrides=["logging.wandb=true", "logging.wandb_mode=offline", "run.name=b", "logging.wandb_name=b-shown"])
    a, b = MetricsLogger.for_run(tmp_path / "a", cfg_a), MetricsLogger.for_run(tmp_path / "b", cfg_b)
    a.log(1, {"x": 1.0})
    b.log(1, {"x": 2.0})
    a.log(2, {"x": 3.0})
    a.close()
    b.close()
    runs = {r["run"].display_name: r for r in map(_read_run, _offline_runs(wandb_offline_dir))}
    assert sorted(runs) == ["a", "b-shown"]  # wandb_name replaces run.name; the default project
    assert runs["a"]["run"].project == runs["b-shown"]["run"].project == "agentrl"
    assert runs["a"]["history"] == {1: {"x": 1}, 2: {"x": 3}} and runs["b-shown"]["history"] == {1: {"x": 2}}


# ----------------------------------------------------------------------------- the config check
def test_wandb_true_without_wandb_installed_fails_the_config_check_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as if not installed
    load_config(QUICKSTART, overrides=["logging.wandb=false"])  # not asked for: fine
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, overrides=["logging.wandb=true"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{QUICKSTART}: logging.wandb is true but the wandb package is not installed"), msg
    assert "pip install 'agentrl[wandb]'" in msg and "logging.wandb=false" in msg, msg


@pytest.mark.parametrize("override, says", [
    ("logging.wandb_project=a/b", "logging.wandb_project must be 1 to 128 characters without any of / \\ # ? % :, got 'a/b'"),
    ('logging.wandb_project=""', "logging.wandb_project must be 1 to 128 characters"),
    (f"logging.wandb_project={'p' * 129}", "logging.wandb_project must be 1 to 128 characters"),
    ('logging.wandb_entity=" "', "logging.wandb_entity must be a non-empty string or null (null: your default entity), got ' '"),
    ('logging.wandb_name=""', "logging.wandb_name must be a non-empty string or null (null: run.name), got ''"),
    ('logging.wandb_tags=["ok", ""]', "logging.wandb_tags[1] must be 1 to 64 characters (W&B's limit), got 0: ''"),
    (f'logging.wandb_tags=["{"t" * 65}"]', "logging.wandb_tags[0] must be 1 to 64 characters (W&B's limit), got 65"),
    ("logging.wandb_mode=cloud", "logging.wandb_mode must be 'online', 'offline' or 'disabled', got 'cloud'"),
])
def test_bad_wandb_settings_fail_at_load_in_one_line(override, says):
    """Checked whether or not logging.wandb is on: W&B would refuse them only at wandb.init,
    after the model is loaded."""
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, overrides=[override])
    msg = str(err.value)
    assert "\n" not in msg and says in msg, msg


def test_the_wandb_defaults_pass_the_check():
    cfg = load_config(QUICKSTART)
    lc = cfg.logging
    assert (lc.wandb, lc.wandb_project, lc.wandb_entity, lc.wandb_name, lc.wandb_tags, lc.wandb_mode) == (False, "agentrl", None, None, [], None)


def test_a_tiny_training_run_with_wandb_on_logs_its_metrics_rows_to_an_offline_run(tmp_path, wandb_offline_dir, guess_env_id):
    """agentrl.train.train -> MetricsLogger.for_run: the W&B history is metrics.jsonl's numbers, row by row."""
    from agentrl.metrics import read_metrics
    from agentrl.train import train

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(f"""
run: {{name: tiny-wandb, output_dir: {tmp_path / 'run'}, seed: 0}}
model:
  path: {tmp_path / 'model'}
  init: {{arch: qwen2, template: chatml, vocab_size: 400, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, corpus_episodes: 4}}
env: {{id: {guess_env_id}, kwargs: {{high: 8, max_turns: 2}}, num_envs: 2}}
rollout: {{group_size: 2, tasks_per_step: 1, max_new_tokens: 8, max_total_tokens: 512}}
sft: {{enabled: false}}
trainer: {{total_steps: 2, micro_batch_size: 2, checkpoint_every: 2, eval_episodes: 2}}
logging: {{progress: false, tensorboard: false, log_trajectories: 0, wandb: true, wandb_mode: offline, wandb_tags: [tiny]}}
algorithm: {{estimator: grpo, loss: {{name: ppo}}, aggregation: token-mean}}
""")
    train(load_config(cfg_file))
    (run_dir,) = _offline_runs(wandb_offline_dir)
    run = _read_run(run_dir)
    assert (run["run"].display_name, list(run["run"].tags), run["run"].project) == ("tiny-wandb", ["tiny"], "agentrl")
    assert run["config"]["env"]["kwargs"] == {"high": 8, "max_turns": 2} and run["config"]["trainer"]["total_steps"] == 2
    numbers: dict[int, dict] = {}
    for row in read_metrics(tmp_path / "run" / "metrics.jsonl"):  # several rows can share a train_step (eval, close failures)
        numbers.setdefault(row["train_step"], {}).update(  # None: a nan or inf, which W&B gets as it is
            {k: v for k, v in row.items() if k != "train_step" and (v is None or isinstance(v, (int, float)) and not isinstance(v, bool))})
    assert sorted(run["history"]) == sorted(numbers) == [0, 1, 2]
    for step, values in numbers.items():
        logged = run["history"][step]
        assert sorted(logged) == sorted(values), step
        assert all(not math.isfinite(logged[k]) for k, v in values.items() if v is None), step
        assert {k: logged[k] for k, v in values.items() if v is not None} == pytest.approx({k: v for k, v in values.items() if v is not None}), step
    assert "rollout/reward_mean" in run["history"][1] and "eval/after_rl/success" in run["history"][2]
