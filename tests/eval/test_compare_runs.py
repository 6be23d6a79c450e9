"""``agentrl compare RUN_A RUN_B``: the study report from finished run folders, no study file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .helpers import check_images, check_runs_csv, expected_values, md_tables

PAIR = ["high4/grpo/seed0", "high4/empg/seed1"]


def test_compare_two_run_folders_writes_the_report_of_both(compared, tmp_path, capsys):
    from agentrl.cli import main

    runs = [compared["out"] / "runs" / key for key in PAIR]
    out = tmp_path / "pair"
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(out), "--final-window", "2"]) == 0
    assert f"report: {out / 'report' / 'report.md'}" in capsys.readouterr().out
    report = out / "report"
    labels = ["high4-grpo-seed0", "high4-empg-seed1"]  # run.name of each
    expected = {label: expected_values(run, target=0.5, window=2) for label, run in zip(labels, runs)}
    check_runs_csv(report / "runs.csv", expected)
    text = (report / "report.md").read_text()
    group, fits, every = md_tables(text)
    assert [row[0] for row in group[1:]] == labels and all(row[1] == "1" for row in group[1:])  # one run per variant
    header = group[0]
    for row in group[1:]:
        assert row[header.index("held-out success after RL")] == f"{expected[row[0]]['final_success']:.3f}"
        assert row[header.index("final entropy (nats)")] == f"{expected[row[0]]['final_entropy']:.3f}"
    assert [row[0] for row in every[1:]] == labels and fits[1][0] == "all"
    for run in runs:
        assert f"`{run.resolve()}`" in text  # the report names its run folders
    check_images(report, ["GuessNumber-v0"])
    # the figures of both runs: the success plot has one panel per run
    page = (report / "report.html").read_text()
    assert all(f"<td>{label}</td>" in page for label in labels)


def test_compare_run_folders_default_out_and_folder_names_as_labels(compared, tmp_path, monkeypatch):
    from agentrl.eval.compare import compare_runs

    for key in PAIR:  # copies whose run.name is the same: the folder names label them
        dst = tmp_path / key.split("/")[1]
        shutil.copytree(compared["out"] / "runs" / key, dst, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
        cfg = (dst / "config.yaml").read_text()
        (dst / "config.yaml").write_text(cfg.replace(f"name: high4-{dst.name}-seed{key[-1]}", "name: same"))
    monkeypatch.chdir(tmp_path)
    result = compare_runs(["grpo", "empg"])
    assert result["runs"] == ["grpo", "empg"] and result["out"] == str(Path("runs") / "compare" / "grpo_vs_empg")
    with (tmp_path / result["out"] / "report" / "runs.csv").open() as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["grpo", "empg"]


def _folder(root: Path, name: str, files: tuple[str, ...]) -> Path:
    p = root / name
    p.mkdir()
    for f in files:
        (p / f).write_text("{}\n" if f != "metrics.jsonl" else json.dumps({"train_step": 1}) + "\n")
    return p


@pytest.mark.parametrize(
    "files, message",
    [
        (("config.yaml", "metrics.jsonl"), "it has no summary.json; training has not finished"),
        (("notes.txt",), "it has no config.yaml, metrics.jsonl, summary.json; it is not an `agentrl train` run folder"),
    ],
)
def test_compare_refuses_a_folder_that_is_not_a_finished_run(tmp_path, capsys, files, message):
    from agentrl.cli import main

    good = _folder(tmp_path, "good", ("config.yaml", "metrics.jsonl", "summary.json"))
    bad = _folder(tmp_path, "bad", files)
    assert main(["compare", str(good), str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{str(bad)!r} is not a finished run: {message}" in err
    assert not (tmp_path / "out").exists()


def test_compare_run_folders_bad_input(tmp_path, capsys):
    from agentrl.cli import main

    good = _folder(tmp_path, "good", ("config.yaml", "metrics.jsonl", "summary.json"))
    study = tmp_path / "s.yaml"
    study.write_text("study: x\n")
    cases = [
        ([str(good), str(tmp_path / "missing")], "does not exist"),
        ([str(good), str(study)], "got a study file"),
        ([str(good), str(good)], "given twice"),
        ([str(good), str(good), "--jobs", "2"], "--smoke and --jobs apply to a study file"),
        ([str(good), "--final-window", "0"], "must be >= 1, got 0 and 1"),
        ([str(study), "--smooth", "3"], "--smooth apply to run folders"),
    ]
    for args, message in cases:
        assert main(["compare", *args]) == 2, args
        assert message in capsys.readouterr().err, args
