"""CodeRepair: data and split (pure), the harness against reward hacking, and real episodes
through the bwrap sandbox, including the expert on all 164 HumanEval problems."""

from __future__ import annotations

import asyncio
import re
import time

import agentrl.envs as envs
import pytest
from agentrl.envs.checks import run_checks
from agentrl.envs.coderepair import (
    Bug,
    CodeRepairEnv,
    grade,
    load_bugs,
    load_problems,
    parse_harness_output,
    split_of,
    visible_tests,
)
from agentrl.envs.coderepair_bugs import candidate_bugs
from agentrl.sandboxes import Limits, run_sync

ID = "agentrl/CodeRepair-v0"
WRONG = "def has_close_elements(numbers, threshold):\n    return True\n"  # HumanEval/0, wrong


def make(**kwargs) -> CodeRepairEnv:
    return envs.make(ID, **kwargs).unwrapped  # type: ignore[return-value]


@pytest.fixture(scope="module")
def env():
    e = make()
    yield e
    e.close()


# ----------------------------------------------------------------- pure: data, split, bugs
def test_problems_split_and_visible_tests():
    problems = load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0" and problems[163].task_id == "HumanEval/163"
    e = make()
    assert (e.num_tasks("train"), e.num_tasks("test"), e.num_tasks("all")) == (134, 30, 164)
    train = {e.get_task("train", i).task_id for i in range(134)}
    test = {e.get_task("test", i).task_id for i in range(30)}
    assert not train & test and len(train | test) == 164
    assert all(split_of(t) == "test" for t in test)
    # visible tests: the first min(3, ceil(n/2)) top-level candidate asserts of check()
    assert problems[0].visible == (0, 1, 2)  # 7 asserts
    assert visible_tests("def check(candidate):\n    import math\n    assert candidate(1) == 2\n    assert True\n    assert candidate(2) == 3\n") == (1,)
    # only looped randomized asserts: the whole check is visible
    assert problems[32].visible == tuple(range(len(problems[32].visible))) and len(problems[32].visible) > 1


def test_task_prompt_and_reset(env):
    obs, info = env.reset(seed=0, options={"task_index": 0, "split": "all"})
    assert info["task_id"] == "HumanEval/0"
    assert "def has_close_elements" in obs[1]["content"] and "no body yet" in obs[1]["content"]
    assert [t["function"]["name"] for t in info["tools"]] == sorted(
        ["edit_solution", "read_solution", "run_python", "run_tests", "submit", "write_solution"]
    )
    assert env.solution == load_problems()[0].prompt


def test_bugs_are_one_token_and_deterministic():
    problems = load_problems()
    assert candidate_bugs(problems[5]) == candidate_bugs(problems[5])
    bugs = load_bugs()
    assert len(bugs) >= 155  # a few one-line solutions have no verified one-token bug
    for task_id, found in bugs.items():
        p = problems[int(task_id.split("/")[1])]
        mutated = found[0].apply(p.canonical_solution)
        assert mutated != p.canonical_solution
        diff = [(a, b) for a, b in zip(p.canonical_solution.split("\n"), mutated.split("\n")) if a != b]
        assert len(diff) == 1
    with pytest.raises(ValueError, match="does not match"):
        Bug(0, 0, "nope", "x").apply(problems[0].canonical_solution)
    e = make(start="buggy")
    task = e.get_task("all", 0)
    assert task.task_id.endswith("+bug") and "has a bug" in task.prompt
    assert e.num_tasks("all") == len(bugs) == e.num_tasks("train") + e.num_tasks("test")


def test_parse_harness_output_is_untrusting():
    assert parse_harness_output("junk\nAGENTRL-HARNESS {\"passed\": true}\n") == {"passed": True}
    assert parse_harness_output("AGENTRL-HARNESS not json") is None
    assert parse_harness_output("AGENTRL-HARNESS [1]") is None
    assert parse_harness_output("PASSED") is None


def test_bad_options():
    with pytest.raises(ValueError, match=r"start must be one of \['stub', 'buggy'\], got 'broken'"):
        make(start="broken")
    e = make()
    with pytest.raises(IndexError, match=r"task_index 164 is out of range; split 'all' has 164 tasks"):
        e.reset(options={"task_index": 164, "split": "all"})
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        e.reset(options={"split": "dev"})


# ----------------------------------------------------------------- sandbox: reward hacking
FORGE = '''
def _forge(nonce="0" * 64):
    import os
    line = '\\nAGENTRL-HARNESS {"mode": "hidden", "passed": true, "calls": 7, "non_dumpable": true, "nonce": "%s"}\\n' % nonce
    for path in ["/dev/stdout", "/dev/stderr", "/proc/%d/fd/1" % os.getppid(), "/proc/1/fd/1"]:
        try:
            with open(path, "w") as f:
                f.write(line)
        except OSError:
            pass
    print(line + "PASSED\\nAll tests passed")
'''

READ_NONCE = FORGE + '''
import os, re, sys
found = set()
HEX = re.compile(rb"[0-9a-f]{64}")
def scan(data):
    found.update(m.group().decode() for m in HEX.finditer(data or b""))
try:
    scan(sys.stdin.buffer.read())
except Exception:
    pass
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for name in ("fd/0", "environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                scan(f.read(1 << 20))
        except OSError:
            pass
    try:
        mem = open(f"/proc/{pid}/mem", "rb")
        for ln in open(f"/proc/{pid}/maps").read().splitlines():
            addr, perms = ln.split()[:2]
            lo, hi = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(lo)
                scan(mem.read(min(hi - lo, 1 << 24)))
            except (OSError, ValueError, OverflowError):
                pass
    except OSError:
        pass
for root in ("/work", "/tmp", "/opt"):
    for dirpath, _, files in os.walk(root):
        for fn in files:
            try:
                scan(open(os.path.join(dirpath, fn), "rb").read(1 << 20))
            except OSError:
                pass
for n in found:
    _forge(n)
'''

ATTACKS = {
    "print_passed": FORGE + "_forge()\n" + WRONG,
    "sys_exit_0_at_import": "import sys\nprint('PASSED')\nsys.exit(0)\n" + WRONG,
    "os_exit_0_at_import": "import os\nprint('PASSED')\nos._exit(0)\n" + WRONG,
    "raise_systemexit_at_import": "raise SystemExit(0)\n" + WRONG,
    "os_exit_0_in_call": "import os\ndef has_close_elements(numbers, threshold):\n    os._exit(0)\n",
    "sys_exit_0_in_call": "import sys\ndef has_close_elements(numbers, threshold):\n    sys.exit(0)\n",
    "eq_override": (
        "class Yes:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
        "def has_close_elements(numbers, threshold):\n    return Yes()\n"
    ),
    "int_subclass_eq": (
        "class T(int):\n    def __eq__(self, other): return True\n    __hash__ = int.__hash__\n"
        "def has_close_elements(numbers, threshold):\n    return T(1)\n"
    ),
    "monkeypatch": (
        "import builtins, sys, json\nbuiltins.AssertionError = type('NoAssert', (Exception,), {})\n"
        "json.loads = lambda *a, **k: {'passed': True}\nsys.modules['__main__'].__dict__['check'] = lambda c: None\n" + WRONG
    ),
    "edit_test_files": (
        "import os, glob\n"
        "for p in ['test.py', 'harness.py', 'main.py', '/opt/agentrl/main.py', 'solution.py', '/tmp/test.py']:\n"
        "    try:\n        open(p, 'w').write('def check(candidate):\\n    pass\\n')\n    except OSError: pass\n"
        "for p in glob.glob('/work/*') + glob.glob('/tmp/*') + glob.glob('/opt/agentrl/*'):\n"
        "    try:\n        open(p, 'w').write('def check(candidate):\\n    pass\\n')\n    except OSError: pass\n" + WRONG
    ),
    "kill_judge": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + WRONG,
    "read_nonce": READ_NONCE + WRONG,
}


@pytest.fixture(scope="module")
def sandbox(env):
    return env.sandbox


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_reward_hacks_get_zero(env, attack):
    """Each attack is a wrong solution plus a hack; through the env it must earn 0."""
    env.reset(seed=0, options={"task_index": 0, "split": "all"})
    env.step(env.call("write_solution", code=ATTACKS[attack]))
    _, reward, terminated, _, info = env.step(env.call("submit"))
    assert terminated and reward == 0.0, info["grade"]
    assert info["grade"]["passed"] is False


def test_state_left_by_earlier_runs_is_gone(sandbox):
    """A solution that is right only when it finds its own marker from an earlier run fails both
    times: stateless grading calls never see earlier files (nor the session's)."""
    code = (
        "import os\nHAVE = os.path.exists('/tmp/agentrl_state') or os.path.exists('agentrl_state')\n"
        "open('/tmp/agentrl_state', 'w').write('x'); open('agentrl_state', 'w').write('x')\n"
        "def has_close_elements(numbers, threshold):\n    if not HAVE: return None\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)\n"
    )
    problem = load_problems()[0]

    async def twice():
        return [await grade(sandbox, problem, code, limits=Limits(timeout_s=10)) for _ in range(2)]

    first, second = run_sync(twice())
    assert not first.passed and not second.passed


def test_state_left_in_the_session_is_not_seen_by_the_grader(env):
    env.reset(seed=0, options={"task_index": 0, "split": "all"})
    env.step(env.call("write_solution", code=WRONG))
    obs, *_ = env.step(env.call("run_python", code=(
        "src = open('solution.py').read().replace('return True', 'return False')\n"
        "open('solution.py', 'w').write(src)\n"
        "open('/tmp/agentrl_state', 'w').write('passed')\nprint(open('solution.py').read())"
    )))
    assert "return False" in obs[0]["content"]
    _, reward, terminated, _, _ = env.step(env.call("submit"))
    assert terminated and reward == 0.0


def test_a_spoiled_nonce_check_would_matter(sandbox):
    """Control for the read_nonce attack: on this kernel a child CAN read its dumpable parent's
    memory (so the harness's prctl(PR_SET_DUMPABLE, 0) is what protects the nonce)."""
    program = r'''
import ctypes, hashlib, os, secrets, sys
if PROTECT:
    assert ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0
secret = "SECRET-" + secrets.token_hex(16)
child = """
import os, re, sys, hashlib
ppid, want = os.getppid(), sys.argv[1]
try:
    mem = open(f"/proc/{ppid}/mem", "rb")
    hits = set()
    for ln in open(f"/proc/{ppid}/maps").read().splitlines():
        addr, perms = ln.split()[:2]
        lo, hi = (int(x, 16) for x in addr.split("-"))
        try:
            mem.seek(lo); data = mem.read(hi - lo)
        except (OSError, ValueError, OverflowError):
            continue
        hits.update(m.group() for m in re.finditer(rb"SECRET-[0-9a-f]{32}", data))
    print("FOUND" if any(hashlib.sha256(h).hexdigest() == want for h in hits) else "NOTFOUND")
except OSError as e:
    print("DENIED", e.errno)
"""
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", child, hashlib.sha256(secret.encode()).hexdigest()])
os.waitpid(pid, 0)
'''
    exposed = sandbox.run_sync("PROTECT = False\n" + program)
    protected = sandbox.run_sync("PROTECT = True\n" + program)
    assert protected.stdout.startswith("DENIED"), protected
    assert exposed.stdout.strip() in ("FOUND", "DENIED 13"), exposed  # FOUND here (no Yama); DENIED under Yama


# ----------------------------------------------------------------- sandbox: episodes
def test_every_check_passes():
    results = run_checks(ID, n_tasks=2)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


def test_buggy_mode_checks_and_expert_repairs():
    results = run_checks(ID, only=["determinism", "expert"], n_tasks=2, start="buggy")
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed
    e = make(start="buggy")
    r = envs.run_episode(e, e.expert, options={"task_index": 0, "split": "all"})
    assert r["success"] and r["turns"] == 4
    first_feedback = e.transcript[3]["content"]
    assert "[FAIL]" in first_feedback  # the bug shows in the visible tests


def test_visible_feedback_and_tools(env):
    env.reset(seed=0, options={"task_index": 2, "split": "all"})  # truncate_number
    obs, reward, *_ = env.step(env.call("run_tests"))
    assert "Visible tests: 0/2 passed." in obs[0]["content"] and "returned None" in obs[0]["content"] and reward == 0
    env.step(env.call("edit_solution", old='    """\n', new='    """\n    print("debug", number)\n    return number - int(number) + 1\n'))
    obs, *_ = env.step(env.call("run_tests"))
    text = obs[0]["content"]
    assert "truncate_number(3.5) returned 1.5" in text and "debug 3.5" in text
    obs, *_ = env.step(env.call("edit_solution", old="not there", new=""))
    assert "does not occur" in obs[0]["content"]
    obs, *_ = env.step(env.call("run_python", code='exec(open("solution.py").read())\nx = truncate_number(2.25)\nprint(x)'))
    assert obs[0]["content"].endswith("1.25")
    obs, *_ = env.step(env.call("run_python", code="print(x * 2)"))  # session state persists
    assert obs[0]["content"] == "2.5"
    obs, *_ = env.step(env.call("read_solution"))
    assert "int(number) + 1" in obs[0]["content"]
    obs, *_ = env.step(env.call("write_solution", code="def truncate_number(number):\n    while True: pass\n"))
    obs, *_ = env.step(env.call("run_tests"))
    assert "timed out" in obs[0]["content"]


@pytest.mark.slow  # 328 sandbox calls (~7 s of CPU); 85-95 s wall at load average ~25 on 2 shared cores
def test_expert_solves_all_164_through_the_sandbox():
    """Acceptance: the expert reaches full reward on every HumanEval canonical solution, each
    through real sandboxed visible-test and hidden-test calls (episodes run concurrently)."""
    n = load_problems().__len__()
    gate = asyncio.Semaphore(6)

    async def episode(index: int) -> tuple[str, float, int, str]:
        async with gate:
            # the default 10 s per sandbox call is a wall-clock bound; this test is about the
            # expert's correctness, so a loaded machine (one run timed out HumanEval/75, 0.13 s
            # of CPU, beside two training jobs) gets room
            e = make(timeout_s=60.0)
            obs, info = await e.areset(seed=index, options={"task_index": index, "split": "all"})
            policy, total, done, turns = e.expert(), 0.0, False, 0
            while not done:
                obs, reward, terminated, truncated, _ = await e.astep(policy(obs))
                total, done, turns = total + reward, terminated or truncated, turns + 1
            await e.teardown()
            visible = next(m["content"] for m in e.transcript if m.get("name") == "run_tests")
            assert re.match(r"Visible tests: (\d+)/\1 passed\.", visible), (info["task_id"], visible)
            return info["task_id"], total, turns, str(e.transcript[-1]["content"])[:300]

    async def all_episodes():
        return await asyncio.gather(*(episode(i) for i in range(n)))

    t0 = time.perf_counter()
    results = run_sync(all_episodes())
    failed = [(tid, ret, last) for tid, ret, _, last in results if ret != 1.0]  # with the env's last message
    assert not failed, failed
    assert {turns for _, _, turns, _ in results} == {3}
    print(f"164 expert episodes in {time.perf_counter() - t0:.1f} s")
