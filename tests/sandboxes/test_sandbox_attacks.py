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
