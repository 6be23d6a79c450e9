"""docs/add_method.md, done as the page says: its two files (the method's module and its YAML)
are written from the page into a folder laid out like a checkout's root, its Python API block
runs there, and the YAML trains (sizes shrunk and the env swapped for the sandbox-free
GuessNumber doc env, as tests/train/test_methods.py does for configs/methods). Nothing in
agentrl/ is touched: the method lives in its own file."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from agentrl.config import ConfigError, load_config
from agentrl.metrics import read_metrics

from .conftest import build_warm_model

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "add_method.md"
FILES = ("my_methods/capped_reinforce.py", "my_methods/capped_reinforce.yaml")


def doc_blocks() -> tuple[dict[str, str], list[str]]:
    """The page's files (code blocks whose first line is ``# my_methods/<file>``) and its other
    Python blocks, in page order."""
    files, python = {}, []
    for lang, body in re.findall(r"```(python|yaml)\n(.*?)```", DOC.read_text(), re.DOTALL):
        m = re.match(r"# (my_methods/\S+)", body.splitlines()[0])
        if m:
            files[m.group(1)] = body
        elif lang == "python":
            python.append(body)
    return files, python


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory, guess_env_id):
    return build_warm_model(tmp_path_factory, guess_env_id, sft_steps=60)


def test_the_page_adds_a_method_in_one_file_and_one_yaml(tmp_path, monkeypatch, warm_model, guess_env_id):
    from agentrl.algorithms import LOSSES
    from agentrl.train import train

    files, python = doc_blocks()
    assert sorted(files) == sorted(FILES), f"docs/add_method.md must show exactly these files, got {sorted(files)}"
    assert python, "docs/add_method.md must show the Python API"
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "configs").symlink_to(ROOT / "configs")  # the YAML's base: ../configs/quickstart.yaml
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    monkeypatch.chdir(root)  # "from the root of a checkout"
    assert "capped_reinforce" not in LOSSES
    try:
        for block in python:  # the API example: imports the file, builds the method, checks a gradient
            exec(compile(block, str(DOC), "exec"), {"__name__": "add_method_doc"})
        assert "capped_reinforce" in LOSSES
        shrink = [f"run.output_dir={tmp_path / 'run'}", f"model.path={warm_model}", "model.init=null", "sft.enabled=false",
                  f"env.id={guess_env_id}", "env.kwargs={high: 4, max_turns: 4}", "env.eval_kwargs=null", "env.num_envs=8",
                  "rollout.group_size=4", "rollout.tasks_per_step=2", "rollout.max_new_tokens=24", "rollout.tools_in_prompt=false",
                  "trainer.total_steps=2", "trainer.micro_batch_size=4", "trainer.eval_episodes=2", "logging.progress=false",
                  "logging.tensorboard=false"]
        with pytest.raises(ConfigError, match="Did you mean 'cap'"):
            load_config("my_methods/capped_reinforce.yaml", overrides=[*shrink, "algorithm.loss.cpa=1.5"])
        with pytest.raises(ConfigError, match="cap"):  # the range given at registration
            load_config("my_methods/capped_reinforce.yaml", overrides=[*shrink, "algorithm.loss.cap=-1"])
        cfg = load_config("my_methods/capped_reinforce.yaml", overrides=shrink)
        train(cfg)
        rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/total" in r]
        assert [r["train_step"] for r in rows] == [1, 2]
        keys = set().union(*rows)
        assert {"capped/frac", "policy/clipfrac/turn_0"} <= keys  # its own metric; what it clipped, per turn
        assert all(r["loss/total"] == r["loss/total"] for r in rows)  # not NaN
    finally:
        LOSSES.unregister("capped_reinforce")
        sys.modules.pop("agentrl_user.capped_reinforce", None)


def test_the_page_lists_the_method_and_compares_it(tmp_path, monkeypatch, capsys):
    """The page's other two claims: ``agentrl methods list --import <file>`` lists the loss, and a
    study with ``methods_dir: my_methods`` takes the method file's algorithm and run.imports
    (its runs build and pass every pre-training check; nothing trains here)."""
    from agentrl.algorithms import LOSSES
    from agentrl.cli import main
    from agentrl.eval.study import check_runs, expand_runs, load_study

    files, _ = doc_blocks()
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "configs").symlink_to(ROOT / "configs")
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    monkeypatch.chdir(root)
    text = DOC.read_text()
    assert "agentrl methods list --import\nmy_methods/capped_reinforce.py --kind losses" in text
    assert "methods_dir: my_methods" in text and "methods: [capped_reinforce]" in text
    try:
        assert main(["methods", "list", "--import", "my_methods/capped_reinforce.py", "--kind", "losses"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"^  capped_reinforce +\S", out, re.MULTILINE), out
        LOSSES.unregister("capped_reinforce")  # the study must import it again, from the method file
        sys.modules.pop("agentrl_user.capped_reinforce", None)
        (root / "study.yaml").write_text("study: mine\nbase: configs/quickstart.yaml\nmethods_dir: my_methods\n"
                                         "methods: [capped_reinforce]\nseeds: [0]\n")
        runs = expand_runs(load_study(root / "study.yaml"), tmp_path / "results")
        rl = [r for r in runs if r.kind == "rl"]
        assert len(rl) == 1 and str((root / "my_methods" / "capped_reinforce.py").resolve()) in rl[0].config["run"]["imports"]
        assert rl[0].config["algorithm"]["loss"]["name"] == "capped_reinforce"
        check_runs(runs)  # imports the file and checks the algorithm section against the registry
        assert "capped_reinforce" in LOSSES
    finally:
        LOSSES.unregister("capped_reinforce")
        sys.modules.pop("agentrl_user.capped_reinforce", None)
