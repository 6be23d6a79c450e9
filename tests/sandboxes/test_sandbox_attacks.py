"""The adversarial suite (sandboxes/selftest.py), one test per attack and backend.

Each test asserts the attack's reported status is one of those that count as contained, its
wall time is within the bound, its own checks held (exact output caps, EMFILE, denied
syscalls, cheats graded as failures...) and the host is unchanged afterwards (no tagged
process anywhere, no new descendants, no leftover cgroup/container tasks, no markers, protected
files and shm/tmp/disk usage as before). The row's detail says what went wrong.
"""

from __future__ import annotations

import tempfile

import pytest
from agentrl.sandboxes import Status, run_sync
from agentrl.sandboxes.selftest import (
    ATTACKS,
    measure_slowness,
    run_attack,
    select_attacks,
)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="agentrl-selftest-") as d:
        yield d


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_contained(sandbox, attack, scratch):
    row = run_sync(run_attack(sandbox, attack, scratch, slowness=measure_slowness(3)))
    assert row.attack == attack.name and row.number == attack.number
    assert Status(row.status) in attack.expect, row.detail
    assert row.passed, f"{attack.name}: {row.detail}"


def test_every_sandboxes_md_attack_is_covered():
    assert sorted({a.number for a in ATTACKS}) == list(range(1, 22))
    assert len({a.name for a in ATTACKS}) == len(ATTACKS)


def test_attack_selection_by_glob_and_number():
    assert [a.name for a in select_attacks("fork*")] == ["fork_bomb", "fork_bomb_shell"]
    assert [a.name for a in select_attacks("15, sleep_hang")] == ["sleep_hang", "network_egress"]
    with pytest.raises(ValueError, match="known attacks: fork_bomb"):
        select_attacks("no_such_attack")


def test_every_attack_program_is_a_file_that_is_read_parses_and_is_installed():
    import ast
    import subprocess
    import tomllib
    from pathlib import Path

    from agentrl.sandboxes import selftest

    root = Path(selftest.ATTACKS_DIR)
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert set(selftest.PROGRAMS) == on_disk  # every file is an attack program, every program a file
    for name, text in selftest.PROGRAMS.items():
        assert text.startswith("# Attack "), name  # the first line says which attack and its placeholders
        if name.endswith(".py"):
            ast.parse(text, filename=name)
        else:
            subprocess.run(["bash", "-n", str(root / name)], check=True)
    pyproject = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["agentrl.sandboxes"]
    packaged = {p.relative_to(root.parent).as_posix() for pat in patterns for p in root.parent.glob(pat)}
    assert packaged == {f"attacks/{n}" for n in on_disk}  # an installed package finds them


def test_a_missing_program_says_how_to_fix_it():
    from agentrl.sandboxes.selftest import program

    with pytest.raises(FileNotFoundError, match=r"no_such\.py is missing: .*package-data.*reinstall"):
        program("no_such.py")


def test_slowness_reads_the_run_queue_as_well_as_start_up_time(monkeypatch):
    """A machine whose run queue is long is slow even where a bare interpreter starts quickly
    (the inode flood's tmpfs teardown took 8.08 s at load 45 on 2 cores, start-up ~25 ms)."""
    import os

    from agentrl.sandboxes import selftest

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5 * cpus, 0.0, 0.0))
    assert selftest.measure_slowness(1) >= 3.5
    monkeypatch.setattr(os, "getloadavg", lambda: (100.0 * cpus, 0.0, 0.0))
    assert selftest.measure_slowness(1) == 10.0  # clamped
