"""``agentrl envs check``: the detail column printed whole, and the split-overlap check."""

from __future__ import annotations

import argparse

import pytest

from agentrl.envs import Task, ToolEnv, ToolOutput, register_env, tool
from agentrl.envs import cli
from agentrl.envs.checks import _spread, check_split_overlap, run_checks


class OverlapToyEnv(ToolEnv):
    """train: ids toy/0..19; test: 10 ids starting at ``test_start`` (12: toy/12..toy/19 are
    shared); dev: its own ids; all: the union (never asked for). ``same_prompt``: test/0 gets train/3's prompt."""

    splits = ("train", "dev", "test", "all")

    def __init__(self, *, test_start: int = 100, same_prompt: bool = False, train_size: int = 20, prefix: str = "toy", **kwargs):
        super().__init__(**kwargs)
        self.test_start, self.same_prompt, self.train_size, self.prefix = test_start, same_prompt, train_size, prefix

    def num_tasks(self, split: str) -> int:
        return {"train": self.train_size, "dev": 4, "test": 10, "all": self.train_size + 14}[split]

    def get_task(self, split: str, index: int) -> Task:
        assert split != "all", "the union split is not compared"
        n = {"train": index, "dev": 1000 + index, "test": self.test_start + index}[split]
        prompt = "say 3" if self.same_prompt and split == "test" and index == 0 else f"say {n}"
        return Task(f"{self.prefix}/{n}", split, index, prompt, data=n)

    @tool
    def say(self, n: int) -> ToolOutput:
        """Say the number.

        Args:
            n: the number
        """
        return ToolOutput("ok", reward=1.0, terminated=True)

    def expert(self):
        return lambda obs: self.call("say", n=self.task.data)


TOY = register_env("OverlapToy", OverlapToyEnv)


def test_disjoint_splits_pass_and_say_what_was_compared():
    (r,) = run_checks(TOY, only=["split_overlap"])
    assert r.passed, r.detail
    assert r.detail == "no task id shared between splits (tasks compared: train 20, dev 4, test 10; all (union of the others) not compared)"


def test_overlapping_splits_fail_naming_a_few_ids_then_a_count(capsys):
    (r,) = run_checks(TOY, only=["split_overlap"], test_start=12)
    assert not r.passed
    first = r.detail.splitlines()[0]
    assert first.startswith("AssertionError: train and test share 8 task id(s): toy/12, toy/13, toy/14, toy/15, toy/16 and 3 more (tasks compared: train 20, dev 4, test 10)")
    assert "dev and" not in first and "all" not in first  # dev is disjoint; the union split is not compared
    # the CLI: exit 1, the ids in the table and after it
    assert cli.cmd_check(argparse.Namespace(env_id=TOY, only=["split_overlap"], tasks=1, option=["test_start=12"])) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "toy/16 and 3 more" in out


def test_same_prompt_under_another_id_is_a_note_not_a_failure():
    (r,) = run_checks(TOY, only=["split_overlap"], same_prompt=True)
    assert r.passed, r.detail
    assert r.detail.endswith("Note: train and test give 1 task(s) the same prompt: toy/3 = toy/100; the same task unless their data differs")


def test_time_budget_still_compares_the_first_tasks_of_every_split():
    # budget 0: min_tasks per split, starting at index 0, where a test split drawn with the
    # train seeds repeats train
    with pytest.raises(AssertionError, match=r"train and test share 5 task id\(s\): toy/0, toy/1, toy/2, toy/3, toy/4 \(tasks compared: train 5 of 5000, dev 4, test 5 of 10\)"):
        check_split_overlap(TOY, budget_s=0.0, min_tasks=5, test_start=0, train_size=5000)
    assert "train 5 of 5000, dev 4, test 5 of 10" in check_split_overlap(TOY, budget_s=0.0, min_tasks=5, train_size=5000)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 6, 7, 10, 33, 64, 1000])
def test_spread_gives_every_index_once(n):
    order = list(_spread(n))
    assert sorted(order) == list(range(n))
    if n >= 10:
        assert order[:5] == [0, 1, 2, 3, 4] and order[5] == n // 2


def _detail_column(out: str) -> str:
    """The table's detail cells joined, without whitespace (wrapping moves spaces, not text)."""
    cells = [line.split("│")[4] for line in out.splitlines() if line.count("│") == 5]
    return "".join("".join(cells).split())


def test_detail_longer_than_100_chars_is_printed_whole(guess_env_id, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal: the detail wraps, nothing is cut
    (expected,) = run_checks(guess_env_id, only=["expert"], n_tasks=20)
    assert expected.passed and len(expected.detail) > 500 and expected.detail.endswith("t)")
    assert cli.cmd_check(argparse.Namespace(env_id=guess_env_id, only=["expert"], tasks=20, option=[])) == 0
    out = capsys.readouterr().out
    assert _detail_column(out) == "".join(expected.detail.split())  # every task and the closing bracket
    assert "…" not in out


def test_a_word_wider_than_the_column_is_folded_not_cut(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    long = "task-" + "x" * 90  # one 95-character word in a ~40-character column
    assert cli.cmd_check(argparse.Namespace(env_id=TOY, only=["split_overlap"], tasks=1, option=[f"prefix={long}", "test_start=19"])) == 1
    out = capsys.readouterr().out
    assert _detail_column(out).startswith(f"AssertionError:trainandtestshare1taskid(s):{long}/19(taskscompared:")
