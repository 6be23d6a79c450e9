"""What a generated ShellQuest task is, independent of how it was generated.

A :class:`Quest` is plain data: the file tree written into the sandbox, the user prompt, the
expert's shell commands, the sub-goals (for partial credit) and the final checks (for
success). Both generators (:mod:`.small`, :mod:`.full`) return one; the env only reads it.

Checks never trust what the model printed: a :class:`FileCheck` is scored on the bytes the
env reads back from the sandbox with ``Session.get_file``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

#: Where every answer path is relative to (the sandbox work dir, agentrl.sandboxes.WORK_DIR).
WORK = "/work"


def normalize_lines(text: str, *, paths: bool = False) -> tuple[str, ...]:
    """The non-empty lines of ``text``, each stripped; with ``paths=True`` a leading ``./`` or
    ``/work/`` is removed so ``find . -name x`` and ``find /work -name x`` output both match."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if paths:
            for prefix in ("./", WORK + "/"):
                if line.startswith(prefix):
                    line = line[len(prefix):]
        out.append(line)
    return tuple(out)


@dataclass(frozen=True)
class FileCheck:
    """The file at ``path`` (relative to the work dir) must hold ``expected`` lines.

    Attributes:
        path: relative path of the output file the model must write.
        expected: the expected non-empty lines after :func:`normalize_lines`.
        paths: the lines are file paths (``./`` and ``/work/`` prefixes are ignored).
    """

    path: str
    expected: tuple[str, ...]
    paths: bool = False

    def passes(self, content: bytes | None) -> bool:
        """True when ``content`` (None: the file is missing) holds exactly the expected lines."""
        if content is None:
            return False
        text = content.decode("utf-8", errors="replace")
        return normalize_lines(text, paths=self.paths) == self.expected


@dataclass(frozen=True)
class CwdCheck:
    """The shell's working directory is ``path`` (relative to the work dir) or below it.

    Used for partial credit in small-vocabulary quests, where following the clue chain means
    changing directory. See ``ShellQuestEnv`` for how (and how far) the probe can be trusted.
    """

    path: str

    def passes(self, cwd: str | None) -> bool:
        if cwd is None:
            return False
        rel = cwd[len(WORK):].lstrip("/") if cwd == WORK or cwd.startswith(WORK + "/") else None
        if rel is None:
            return False
        return rel == self.path or rel.startswith(self.path + "/")


Subgoal = FileCheck | CwdCheck


@dataclass(frozen=True)
class Quest:
    """One generated task.

    Attributes:
        files: relative path -> text content, written into the sandbox work dir at reset.
        prompt: the user message.
        commands: the expert's shell commands in order (the env adds the final ``submit``).
        subgoals: ordered sub-goals; completing one earns partial credit (reward="partial").
        checks: all must pass at ``submit`` for success (full reward).
        signature: a digest of the decision-relevant content; it assigns the quest to the
            train or test split (see :func:`split_of`), so the splits never share a quest.
        meta: small facts for tests and reports (chain length, stage kinds, ...).
    """

    files: dict[str, str]
    prompt: str
    commands: tuple[str, ...]
    subgoals: tuple[Subgoal, ...]
    checks: tuple[FileCheck, ...]
    signature: str
    meta: dict[str, object] = field(default_factory=dict)


#: One signature bucket in TEST_BUCKETS out of this many goes to the test split.
N_BUCKETS = 10
TEST_BUCKETS = frozenset({0})


def split_of(signature: str) -> str:
    """"test" for one signature in ten, else "train": the splits are disjoint by content, not
    only by seed, which matters in small-vocabulary mode where two seeds can draw the same
    quest."""
    bucket = int.from_bytes(hashlib.sha256(signature.encode()).digest()[:8], "big") % N_BUCKETS
    return "test" if bucket in TEST_BUCKETS else "train"


def quest_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from a string of ``parts`` (stable across processes and
    Python versions: str seeds are hashed with SHA-512, not ``hash()``)."""
    return random.Random("|".join(map(str, parts)))
