"""Small-vocabulary quests: a clue chain through nested directories named after 16 animals.

Made for a tiny transformer trained from scratch (the CPU quickstart): every name, word and
command comes from a fixed vocabulary of a few dozen tokens, observations are a few words, and
each expert action is one short formulaic command. Yet the right next command always depends
on what the previous one printed, so a policy that ignores observations fails.

Episode (difficulty 1, horizon 6, chain length 3)::

    shell("cat note")                 -> go fox
    shell("cd fox; cat note")         -> go owl
    shell("cd owl; cat note")         -> go yak
    shell("cd yak; cat note")         -> key hen
    shell("echo hen > /work/answer")  -> (no output)
    submit()                          -> correct

Difficulty 2: each directory holds three word-named files and the clue names both the next
directory and the file to read there (``go owl pig`` -> ``cd owl; cat pig``). Difficulty 3:
as 2, and the last clue asks for a count (``count emu rat`` -> ``grep -c emu rat`` -> ``2`` ->
``echo 2 > /work/answer``). At every level decoy directories and decoy files hold plausible
wrong clues (``key cow``, ``go elk bat``), so guessing or ``grep -r key`` does not find the
answer. Expert turns: chain + 3 (difficulty 1, 2) or chain + 4 (difficulty 3).
"""

from __future__ import annotations

import random

from .quest import CwdCheck, FileCheck, Quest

#: Directory, file and key names. Distinct three-letter words: none is a substring of another,
#: so ``grep -c`` on one-word lines counts exact matches.
WORDS = ("ant", "bat", "bee", "cat", "cow", "dog", "elk", "emu", "fox", "gnu", "hen", "owl", "pig", "ram", "rat", "yak")
ANSWER = "answer"
PROMPTS = {
    1: "Read note. go D: cd D and read note. key K: echo K > /work/answer. Then submit.",
    2: "Read note. go D F: cd D and read F. key K: echo K > /work/answer. Then submit.",
    3: (
        "Read note. go D F: cd D and read F. key K: echo K > /work/answer. "
        "count K F: grep -c K F, then echo the number to /work/answer. Then submit."
    ),
}
SYSTEM_PROMPT = "Use the shell tool to solve the task, then call submit."
#: Expert turns beyond the chain: ``cat note``, the answer, ``submit`` (+ ``grep -c``).
EXTRA_TURNS = {1: 3, 2: 3, 3: 4}
#: Subdirectories per level (the chain's one plus decoys) and word-named files per directory.
BRANCHING = {1: 2, 2: 3, 3: 3}
FILES_PER_DIR = {1: 0, 2: 3, 3: 3}


def min_horizon(difficulty: int) -> int:
    return EXTRA_TURNS[difficulty] + 1


def chain_length(difficulty: int, horizon: int) -> int:
    """Directories to walk so that the expert takes exactly ``horizon`` turns."""
    return horizon - EXTRA_TURNS[difficulty]


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _decoy_text(rng: random.Random, difficulty: int, key: str) -> str:
    """A wrong clue: a wrong key, or a ``go`` to a directory that does not exist there."""
    if rng.random() < 0.5:
        return "key " + rng.choice([w for w in WORDS if w != key])
    return f"go {rng.choice(WORDS)}" if difficulty == 1 else f"go {rng.choice(WORDS)} {rng.choice(WORDS)}"


def generate(rng: random.Random, difficulty: int, horizon: int) -> Quest:
    """One small-vocabulary quest whose expert takes exactly ``horizon`` turns."""
    n = chain_length(difficulty, horizon)
    if n < 1:
        raise ValueError(f"horizon {horizon} is too short for difficulty {difficulty}; the minimum is {min_horizon(difficulty)}")
    key = rng.choice(WORDS)
    branching, per_dir = BRANCHING[difficulty], FILES_PER_DIR[difficulty]
    files: dict[str, str] = {}
    chain: list[str] = []  # chain directory names from the root down
    reads = ["note"]  # the clue file read in each chain directory, root first
    listname = ""
    for level in range(n + 1):
        # All names inside one directory are drawn together so they never collide: its
        # subdirectories (the first continues the chain), its word-named files (the first
        # holds the clue) and, at the bottom of a difficulty-3 quest, the list to count in.
        n_dirs = branching if level < n else 0
        n_files = per_dir if level > 0 else 0
        names = rng.sample(WORDS, n_dirs + n_files + (difficulty == 3 and level == n))
        dirs, fnames, rest = names[:n_dirs], names[n_dirs : n_dirs + n_files], names[n_dirs + n_files :]
        cur = "/".join(chain)
        if fnames:
            reads.append(fnames[0])
            for decoy in fnames[1:]:
                files[_join(cur, decoy)] = _decoy_text(rng, difficulty, key) + "\n"
        elif level > 0:
            reads.append("note")
        if rest:
            listname = rest[0]
        for decoy in dirs[1:]:
            files[_join(cur, decoy, "note" if difficulty == 1 else rng.choice(WORDS))] = _decoy_text(rng, difficulty, key) + "\n"
        if dirs:
            chain.append(dirs[0])
    # The clues: the clue in chain directory i points at directory i+1 and its clue file.
    for i in range(n):
        go = f"go {chain[i]}" if difficulty == 1 else f"go {chain[i]} {reads[i + 1]}"
        files[_join(*chain[:i], reads[i])] = go + "\n"
    commands = ["cat note"] + [f"cd {chain[i]}; cat {reads[i + 1]}" for i in range(n)]
    last = _join(*chain, reads[n])
    if difficulty == 3:
        count = rng.randint(1, 9)
        lines = [key] * count + [rng.choice([w for w in WORDS if w != key]) for _ in range(rng.randint(3, 6))]
        rng.shuffle(lines)
        files[_join(*chain, listname)] = "\n".join(lines) + "\n"
        files[last] = f"count {key} {listname}\n"
        commands += [f"grep -c {key} {listname}", f"echo {count} > /work/{ANSWER}"]
        answer = str(count)
    else:
        files[last] = f"key {key}\n"
        commands.append(f"echo {key} > /work/{ANSWER}")
        answer = key
    return Quest(
        files=files,
        prompt=PROMPTS[difficulty],
        commands=tuple(commands),
        subgoals=tuple(CwdCheck("/".join(chain[: i + 1])) for i in range(n)),
        checks=(FileCheck(ANSWER, (answer,)),),
        signature="small\n" + "\n".join(commands),
        meta={"chain": tuple(chain), "answer": answer},
    )
