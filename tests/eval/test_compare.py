"""``agentrl compare`` on a real (tiny) study: resuming after an interruption, reuse of
finished runs, and a report whose tables, CSVs and plots hold the numbers of the runs."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path

import numpy as np
import yaml

from agentrl.metrics import read_metrics

from .helpers import check_images, check_runs_csv, expected_values, md_tables

RUNS = ["high4/grpo/seed0", "high4/empg/seed0", "high4/grpo/seed1", "high4/empg/seed1"]
T975 = {1: 12.706, 2: 4.303}

def _algo(section):
    """An algorithm section in its resolved form (run configs hold every default spelled out)."""
    from agentrl.algorithms.config import AlgorithmConfig

    return AlgorithmConfig.from_dict(section)



def test_interrupted_compare_resumes_without_redoing_finished_runs(compared):
    out = compared["out"]
    first, resumed, again = compared["calls"]
    # pass 1: the seed-0 warm start, grpo/seed0, then Ctrl-C inside empg/seed0 after its last checkpoint
    assert [Path(c).relative_to(out).as_posix() for c in first] == ["sft/high4/seed0", "runs/high4/grpo/seed0", "runs/high4/empg/seed0"]
    assert compared["interrupted_summary_exists"] is False and compared["interrupted_checkpoints"][-1] == "step_000003"
    # pass 2: the interrupted run continues from its checkpoint (no train_step redone), the
    # seed-1 warm start and its two runs are trained (3 learner updates each); nothing
    # finished is retrained
    assert [Path(c).relative_to(out).as_posix() for c in resumed] == ["runs/high4/empg/seed0", "sft/high4/seed1", "runs/high4/grpo/seed1", "runs/high4/empg/seed1"]
    assert compared["updates"][1] == 2 * 3
    interrupted = read_metrics(Path(compared["interrupted_run"]) / "metrics.jsonl")
    assert [r["train_step"] for r in interrupted if "rollout/success" in r] == [1, 2, 3]
    # pass 3: everything is reused; summary.json files untouched
    assert again == [] and compared["updates"][2] == 0
    assert compared["mtimes"][2] == compared["mtimes"][1] and len(compared["mtimes"][2]) == 4
    finished_first = out / "runs" / "high4" / "grpo" / "seed0" / "summary.json"
    assert compared["mtimes"][1][finished_first] == compared["mtimes"][0][finished_first]
    assert compared["study_json"]["identity"] == "guess_study" and len(compared["study_json"]["runs"]) == 6
    assert all(r["failed"] == {} for r in compared["results"])


def test_method_runs_start_from_the_shared_warm_start(compared):
    out = compared["out"]
    for key in RUNS:
        cfg = yaml.safe_load((out / "runs" / key / "config.yaml").read_text())
        seed = key.rsplit("seed", 1)[1]
        assert cfg["model"]["path"] == str((out / "sft" / "high4" / f"seed{seed}" / "checkpoints" / "step_000000" / "model").resolve())
        assert cfg["model"]["init"] is None and cfg["sft"]["enabled"] is False and cfg["run"]["seed"] == int(seed)
        method = key.split("/")[1]
        method_file = yaml.safe_load((Path(__file__).parents[2] / "configs" / "methods" / f"{method}.yaml").read_text())
        assert _algo(cfg["algorithm"]) == _algo(method_file["algorithm"])
    sft = yaml.safe_load((out / "sft" / "high4" / "seed0" / "config.yaml").read_text())
    assert sft["trainer"]["total_steps"] == 0 and sft["sft"]["enabled"] is True
    assert sft["model"]["path"] == str((out / "models" / "high4" / "seed0").resolve())


# ----------------------------------------------------------------------------- report numbers
def _cell(values: list[float]) -> str:
    """The report's mean [low, high] for these values, recomputed with the t table."""
    xs = np.array(values)
    mean = xs.mean()
    half = T975[len(xs) - 1] * xs.std(ddof=1) / math.sqrt(len(xs))
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def test_report_holds_the_numbers_of_the_runs(compared):
    out = compared["out"]
    report = out / "report"
    for name in ("report.md", "report.html", "runs.csv", "metrics_long.csv", "groups.csv", "fits.csv"):
        assert (report / name).stat().st_size > 200, name
    expected = {key: expected_values(out / "runs" / key, target=0.5, window=2) for key in RUNS}
    # not placeholders: the runs succeed sometimes and have a real entropy
    assert any(e["final_success"] > 0 for e in expected.values())
    assert all(0 < e["final_entropy"] < math.log(400) for e in expected.values())

    check_runs_csv(report / "runs.csv", expected)

    # report.md: the group table (mean [95% t-interval] across the 2 seeds) and the run table
    text = (report / "report.md").read_text()
    group, fits, every = md_tables(text)
    header = group[0]
    for row in group[1:]:
        method = row[0]
        keys = [k for k in RUNS if k.split("/")[1] == method]
        assert row[1] == "2"
        for col, title in (("before_success", "held-out success before RL"), ("final_success", "held-out success after RL"),
                           ("auc_success", "training success AUC"), ("final_entropy", "final entropy (nats)")):
            assert row[header.index(title)] == _cell([expected[k][col] for k in keys]), (method, col)
        reached = [expected[k]["steps_to_target"] for k in keys if not math.isnan(expected[k]["steps_to_target"])]
        assert row[-1].endswith(f"({len(reached)}/2)")
    for row in every[1:]:
        exp = expected[row[0]]
        assert row[1:4] == [f"{exp['final_success']:.3f}", f"{exp['auc_success']:.3f}", f"{exp['final_entropy']:.3f}"]

    # the fit over all points of the env, recomputed with numpy
    h = np.array([r["policy/entropy"] for k in RUNS for r in read_metrics(out / "runs" / k / "metrics.jsonl") if "rollout/success" in r])
    p = np.array([r["rollout/success"] for k in RUNS for r in read_metrics(out / "runs" / k / "metrics.jsonl") if "rollout/success" in r])
    a, b = np.linalg.lstsq(np.stack([-np.exp(h), np.ones_like(h)], 1), p, rcond=None)[0]
    assert fits[1][0] == "all" and fits[1][1:3] == [f"{a:.4f}", f"{b:.4f}"] and fits[1][4] == str(len(h))

    # metrics_long.csv: every numeric metric of every row of every run
    n_values = sum(1 for k in RUNS for r in read_metrics(out / "runs" / k / "metrics.jsonl") for key, v in r.items()
                   if key != "train_step" and isinstance(v, (int, float)) and not isinstance(v, bool))
    with (report / "metrics_long.csv").open() as f:
        long_rows = list(csv.DictReader(f))
    assert len(long_rows) == n_values
    some = next(r for r in long_rows if r["run"] == RUNS[0] and r["metric"] == "policy/entropy" and r["train_step"] == "2")
    row = next(r for r in read_metrics(out / "runs" / RUNS[0] / "metrics.jsonl") if r["train_step"] == 2 and "policy/entropy" in r)
    assert float(some["value"]) == row["policy/entropy"]

    # report.html: the same cells, and every plot linked relatively and present
    page = (report / "report.html").read_text()
    for row in group[1:]:
        for cell in row:
            assert f"<td>{html.escape(cell)}</td>" in page
    check_images(report, ["high4"])


def test_report_only_rebuilds_from_the_run_folders(compared, guess_study, capsys):
    from agentrl.cli import main

    report = compared["out"] / "report" / "runs.csv"
    before = report.read_text()
    report.unlink()
    assert main(["compare", str(guess_study), "--out", str(compared["out"]), "--report-only"]) == 0
    assert report.read_text() == before


def test_jobs_train_in_worker_processes_each_after_its_warm_start(guess_study, tmp_path):
    from agentrl.eval.compare import compare

    out = tmp_path / "jobs"
    result = compare(guess_study, smoke=True, out=out, jobs=2)  # smoke: grpo, seed 0
    assert result["failed"] == {} and result["runs"] == ["sft/high4/seed0", "high4/grpo/seed0"]
    warm_start_done = (out / "sft" / "high4" / "seed0" / "summary.json").stat().st_mtime_ns
    method_started = (out / "runs" / "high4" / "grpo" / "seed0" / "config.yaml").stat().st_mtime_ns
    assert method_started >= warm_start_done
    assert (out / "report" / "runs.csv").read_text().count("\n") == 2


def _committed_copy(out: Path, dest: Path) -> Path:
    """``out`` as a fresh clone of committed results has it: no models, no checkpoints
    (results/studies/.gitignore)."""
    import shutil

    shutil.copytree(out, dest)
    shutil.rmtree(dest / "models")
    for ckpt in list(dest.glob("**/checkpoints")):
        shutil.rmtree(ckpt)
    return dest


def test_runs_saved_before_a_config_field_existed_are_still_reused(compared, guess_study, tmp_path, caplog):
    """A run folder written by older code lacks fields added since (here ``rollout.context``,
    added with turn samples): the field reads as its default, so the run is "done", not
    "stale" (which would retrain every finished run of an old study). A real difference still
    makes it stale."""
    from agentrl.eval.compare import run_state
    from agentrl.eval.study import expand_runs, load_study

    out = _committed_copy(compared["out"], tmp_path / "old")
    runs = expand_runs(load_study(guess_study), out)
    for r in runs:
        saved = Path(r.config["run"]["output_dir"]) / "config.yaml"
        cfg = yaml.safe_load(saved.read_text())
        assert cfg["rollout"].pop("context") == {"policy": "full", "window": None, "marker": True, "options": {}}
        saved.write_text(yaml.safe_dump(cfg))
    with caplog.at_level("WARNING", logger="agentrl.eval.compare"):
        assert [run_state(r, out) for r in runs] == ["done"] * 6
    assert not [r for r in caplog.records if "config changed" in r.getMessage()]

    saved = Path(runs[0].config["run"]["output_dir"]) / "config.yaml"
    cfg = yaml.safe_load(saved.read_text())
    cfg["rollout"]["context"] = {"policy": "window", "window": 2}
    saved.write_text(yaml.safe_dump(cfg))
    with caplog.at_level("WARNING", logger="agentrl.eval.compare"):
        assert run_state(runs[0], out) == "stale"
    assert any("rollout.context.policy: 'window' -> 'full'" in r.getMessage() for r in caplog.records)


def test_a_warm_start_without_its_checkpoint_is_restored_for_the_runs_still_to_train(compared, guess_study, tmp_path, caplog):
    import json
    import shutil

    from agentrl.eval.compare import compare, run_state, train_run, warm_starts_to_restore
    from agentrl.eval.study import expand_runs, load_study

    out = _committed_copy(compared["out"], tmp_path / "clone")
    runs = expand_runs(load_study(guess_study), out)
    # moved to another path (as a clone elsewhere would be): every finished run is still reusable
    assert [run_state(r, out) for r in runs] == ["done"] * 6
    assert warm_starts_to_restore(runs, out) == set()  # every method run finished: nothing to restore
    shutil.rmtree(out / "runs" / "high4" / "empg" / "seed1")  # one run of seed 1 still to train
    assert warm_starts_to_restore(runs, out) == {"sft/high4/seed1"}
    recorded = json.loads((out / "sft" / "high4" / "seed1" / "summary.json").read_text())["sft"]["losses"]
    kept = out / "runs" / "high4" / "grpo" / "seed1" / "summary.json"
    kept_mtime = kept.stat().st_mtime_ns
    calls: list[str] = []

    def train_fn(config):
        calls.append(Path(config["run"]["output_dir"]).relative_to(out).as_posix())
        return train_run(config)

    with caplog.at_level("WARNING", logger="agentrl.eval.compare"):
        result = compare(guess_study, out=out, train_fn=train_fn)
    # the warm start is trained again (model created, SFT, checkpoint), then only the missing run
    assert calls == ["sft/high4/seed1", "runs/high4/empg/seed1"] and result["failed"] == {}
    assert (out / "sft" / "high4" / "seed1" / "checkpoints" / "step_000000" / "model").is_dir()
    assert kept.stat().st_mtime_ns == kept_mtime  # the finished run of that warm start is kept
    # same config, seed and machine: the same SFT, so no warning
    assert json.loads((out / "sft" / "high4" / "seed1" / "summary.json").read_text())["sft"]["losses"] == recorded
    assert not [r for r in caplog.records if "restored warm start" in r.getMessage()]

    # a recorded SFT that the restore does not reproduce is named in a warning
    summary_path = out / "sft" / "high4" / "seed1" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["sft"]["losses"] = [x + 0.5 for x in summary["sft"]["losses"]]
    summary_path.write_text(json.dumps(summary))
    shutil.rmtree(out / "sft" / "high4" / "seed1" / "checkpoints")
    shutil.rmtree(out / "runs" / "high4" / "empg" / "seed1")
    caplog.clear()
    with caplog.at_level("WARNING", logger="agentrl.eval.compare"):
        compare(guess_study, out=out, train_fn=train_fn)
    warned = [r.getMessage() for r in caplog.records if "restored warm start" in r.getMessage()]
    assert len(warned) == 1 and "sft/high4/seed1" in warned[0] and "largest difference 0.5" in warned[0]


def test_an_interrupted_restore_is_still_a_restore(compared, guess_study, tmp_path):
    """Ctrl-C while a warm start is being restored, then compare again: the warm start is
    restored (not treated as redone), so its finished method runs are kept, not retrained.
    Before RESTORE_RECORD, the study's h10 seed-0 warm start, interrupted this way, made the next
    invocation delete and retrain its ten finished method runs."""
    import shutil

    import pytest

    from agentrl.eval.compare import RESTORE_RECORD, compare, train_run

    out = _committed_copy(compared["out"], tmp_path / "clone")
    shutil.rmtree(out / "runs" / "high4" / "empg" / "seed1")  # one run of seed 1 still to train
    kept = out / "runs" / "high4" / "grpo" / "seed1" / "summary.json"
    kept_mtime = kept.stat().st_mtime_ns
    marker = out / "sft" / "high4" / "seed1" / RESTORE_RECORD

    def interrupted(config):
        assert marker.is_file()  # written before the warm start trains
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare(guess_study, out=out, train_fn=interrupted)
    assert not (out / "sft" / "high4" / "seed1" / "summary.json").exists() and marker.is_file()
    calls: list[str] = []

    def train_fn(config):
        calls.append(Path(config["run"]["output_dir"]).relative_to(out).as_posix())
        return train_run(config)

    assert compare(guess_study, out=out, train_fn=train_fn)["failed"] == {}
    assert calls == ["sft/high4/seed1", "runs/high4/empg/seed1"]
    assert kept.stat().st_mtime_ns == kept_mtime and not marker.exists()


def test_runs_record_the_warm_start_model_they_started_from(compared, guess_study):
    """compare_run.json fingerprints the model a warm start made and the model each method
    run started from; the report warns when one (env, seed) mixes two warm-start models (a
    warm start trained again on another machine is not bitwise the same)."""
    import json

    from agentrl.eval.compare import SFT_CHECKPOINT, model_fingerprint
    from agentrl.eval.results import load_results, warm_start_mismatches
    from agentrl.eval.study import expand_runs, load_study

    out = compared["out"]
    made = {}
    for seed in (0, 1):
        sft = out / "sft" / "high4" / f"seed{seed}"
        made[seed] = json.loads((sft / "compare_run.json").read_text())["model_sha256"]
        assert made[seed] == model_fingerprint(sft / SFT_CHECKPOINT) and len(made[seed]) == 16
        int(made[seed], 16)
    assert made[0] != made[1]
    for key in RUNS:
        record = json.loads((out / "runs" / key / "compare_run.json").read_text())
        assert record["warm_start_sha256"] == made[int(key[-1])] and "model_sha256" not in record
    study = load_study(guess_study)
    results, _ = load_results(study, expand_runs(study, out))
    assert warm_start_mismatches(results) == []
    grpo0 = next(r for r in results if r.spec.key == "high4/grpo/seed0")
    grpo0.record["warm_start_sha256"] = "0" * 16  # as if its warm start had been trained again and drifted
    assert warm_start_mismatches(results) == [
        f"high4 seed 0: the method runs started from 2 different warm-start models ({'0' * 16}: grpo; {made[0]}: empg); "
        "their differences include the warm start's"]
    assert model_fingerprint(out / "nothing_here") is None
