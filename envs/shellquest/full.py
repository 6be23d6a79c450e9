"""Full-vocabulary quests: a realistic file tree and a chain of shell chores.

The tree looks like a small server's: ``logs/`` with timestamped service logs, ``data/`` with
CSV exports, ``etc/`` with ``key = value`` configs, ``projects/`` and ``notes/`` with text,
plus filler. A quest is K stages; the clue of each stage (a file somewhere in the tree) states
a chore and where the next clue is. Each chore's answer goes into ``answers/<stage>.txt``:

- find a file by name; read a setting from a config; count matching lines; print a line by
  number (difficulty 1);
- count files by extension; list the distinct values of a CSV column; find which log
  mentions a request id; the last lines of a file in reverse order (difficulty 2; clues
  are then named but not located: "the file named X somewhere under Y/");
- sum a CSV column over a filter; the name on the row with the largest value (difficulty 3,
  with a deeper, larger tree).

Expert: one real shell command per clue and per chore (``find``, ``sed -n``, ``grep -c``,
``cut | sort -u``, ``awk``, ...), so ``2K + 1`` turns with ``submit``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .quest import FileCheck, Quest

TOP_DIRS = ("logs", "data", "etc", "projects", "notes", "home", "archive", "srv")
SUBDIRS = (
    "2023", "2024", "old", "current", "staging", "prod", "eu", "us", "backup", "misc", "team",
    "drafts", "reports", "shared", "q1", "q2", "q3", "q4", "v1", "v2", "internal", "public",
)
PROJECTS = ("atlas", "borealis", "cobalt", "delta", "ember", "falcon", "granite", "harbor", "juniper", "kestrel", "lumen", "meridian", "nimbus", "orchid", "quartz", "raven")
SERVICES = ("auth", "billing", "search", "cache", "gateway", "mailer", "scheduler", "storage", "metrics", "payments", "inventory", "profile")
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yara", "zoe")
CITIES = ("lisbon", "oslo", "lima", "cairo", "delhi", "quito", "dakar", "hanoi", "perth", "tokyo", "paris", "rome", "sofia", "tunis", "vienna", "bogota")
TEAMS = ("red", "blue", "green", "gold", "silver", "black")
LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
EVENTS = ("request served", "cache miss", "connection opened", "connection closed", "retrying call", "job finished", "token refreshed", "slow query", "disk check ok", "config reloaded")
WORDS = (
    "meeting", "budget", "server", "deploy", "review", "backup", "release", "ticket", "migration", "rollback",
    "latency", "owner", "schedule", "incident", "summary", "draft", "plan", "notes", "action", "follow",
    "quarter", "target", "metric", "customer", "feature", "update", "patch", "audit", "access", "policy",
)
SETTINGS = ("port", "host", "timeout_s", "replicas", "owner", "region", "max_conn", "log_level", "retries", "queue")
EXTS = ("log", "csv", "conf", "txt", "md")
CSV_HEADER = ("id", "name", "city", "team", "score", "visits")


class Tree:
    """A file tree under construction: unique paths, random realistic directories."""

    def __init__(self, rng: random.Random, depth: int) -> None:
        self.rng, self.depth, self.files = rng, depth, {}

    def random_dir(self, top: str | None = None) -> str:
        parts = [top or self.rng.choice(TOP_DIRS)]
        for _ in range(self.rng.randint(0, self.depth)):
            parts.append(self.rng.choice(SUBDIRS + PROJECTS))
        return "/".join(parts)

    def add(self, directory: str, name: str, content: str) -> str:
        path = f"{directory}/{name}"
        while path in self.files or any(p.startswith(path + "/") for p in self.files):
            directory = directory + "/" + self.rng.choice(SUBDIRS)
            path = f"{directory}/{name}"
        self.files[path] = content
        return path

    def unique_name(self, stem: str, ext: str) -> str:
        """A file name no other file in the tree has (basenames are unique)."""
        names = {p.rsplit("/", 1)[-1] for p in self.files}
        while True:
            name = f"{stem}_{self.rng.randint(100, 9999)}.{ext}"
            if name not in names:
                return name


# ----------------------------------------------------------------- content makers
def log_lines(rng: random.Random, service: str, n: int, rid: str | None = None) -> list[str]:
    lines, t = [], rng.randint(0, 80000)
    for _ in range(n):
        t += rng.randint(1, 900)
        user = rng.choice(USERS)
        req = f"req-{rng.getrandbits(24):06x}"
        lines.append(f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{t // 3600 % 24:02d}:{t // 60 % 60:02d}:{t % 60:02d} {rng.choice(LEVELS)} {service}: {rng.choice(EVENTS)} user={user} id={req}")
    if rid is not None:
        i = rng.randrange(n)
        lines[i] = lines[i].rsplit("id=", 1)[0] + f"id={rid}"
    return lines


def csv_rows(rng: random.Random, n: int) -> list[tuple[str, ...]]:
    names = rng.sample(USERS, min(n, len(USERS)))
    return [
        (str(i + 1), names[i % len(names)] + ("" if i < len(names) else str(i)), rng.choice(CITIES[:6]), rng.choice(TEAMS), str(rng.randint(1, 99)), str(rng.randint(0, 40)))
        for i in range(n)
    ]


def csv_text(rows: list[tuple[str, ...]]) -> str:
    return "\n".join([",".join(CSV_HEADER)] + [",".join(r) for r in rows]) + "\n"


def conf_text(rng: random.Random, service: str) -> tuple[str, dict[str, str]]:
    keys = rng.sample(SETTINGS, rng.randint(4, 7))
    values = {
        k: {"port": str(rng.randint(1024, 9999)), "host": f"{service}-{rng.randint(1, 9)}.internal", "replicas": str(rng.randint(1, 12)), "owner": rng.choice(USERS), "region": rng.choice(("eu-west", "us-east", "ap-south")), "log_level": rng.choice(("info", "debug", "warn"))}.get(k, str(rng.randint(1, 300)))
        for k in keys
    }
    text = f"# {service} service configuration\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    return text, values


def prose(rng: random.Random, n: int) -> str:
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) for _ in range(n)) + "\n"


# ----------------------------------------------------------------- stages
@dataclass
class Chore:
    """A stage's chore: the instruction, the expert's command, and its expected answer
    (a function of the finished tree, because later stages add files)."""

    text: str
    command: str
    expected: Callable[[dict[str, str]], tuple[str, ...]]
    paths: bool = False
    kind: str = ""


def chore_find(t: Tree, out: str) -> Chore:
    top = t.rng.choice(TOP_DIRS)
    stem = t.rng.choice(WORDS)
    name = t.unique_name(stem, t.rng.choice(EXTS))
    path = t.add(t.random_dir(top), name, prose(t.rng, 2))
    for _ in range(2):  # same stem, other numbers: `find -name` must be exact
        t.add(t.random_dir(top), t.unique_name(stem, name.rsplit(".", 1)[1]), prose(t.rng, 2))
    return Chore(f"Find the file named {name} somewhere under {top}/ and write its path (relative to /work) to {out}.", f"find {top} -name {name} > {out}", lambda f: (path,), paths=True, kind="find")


def chore_setting(t: Tree, out: str, hidden: bool) -> Chore:
    service = t.rng.choice(SERVICES)
    text, values = conf_text(t.rng, service)
    name = t.unique_name(service, "conf")
    path = t.add(t.random_dir("etc"), name, text)
    key = t.rng.choice(sorted(values))
    where = f"the config file {name} (somewhere under etc/)" if hidden else path
    target = f"$(find etc -name {name})" if hidden else path
    return Chore(f"Read {where} and write the value of the setting {key} to {out}.", f"sed -n 's/^{key} = //p' {target} > {out}", lambda f: (values[key],), kind="setting")


def chore_count(t: Tree, out: str) -> Chore:
    service = t.rng.choice(SERVICES)
    lines = log_lines(t.rng, service, t.rng.randint(8, 30))
    if t.rng.random() < 0.5:
        needle = t.rng.choice(("ERROR", "WARN"))
    else:
        needle = "user=" + t.rng.choice(USERS)
    if not any(needle in line for line in lines):
        lines[0] = lines[0].replace(" INFO ", f" {needle} ") if needle in ("ERROR", "WARN") else lines[0].rsplit("user=", 1)[0] + f"{needle} id=req-000000"
    path = t.add(t.random_dir("logs"), t.unique_name(service, "log"), "\n".join(lines) + "\n")
    return Chore(f"Count the lines of {path} that contain {needle} and write the number to {out}.", f"grep -c '{needle}' {path} > {out}", lambda f: (str(sum(needle in x for x in f[path].splitlines())),), kind="count")


def chore_line(t: Tree, out: str) -> Chore:
    path = t.add(t.random_dir(t.rng.choice(("notes", "projects", "home"))), t.unique_name(t.rng.choice(WORDS), "txt"), prose(t.rng, t.rng.randint(5, 12)))
    k = t.rng.randint(2, 5)
    return Chore(f"Write line {k} of {path} to {out}.", f"sed -n '{k}p' {path} > {out}", lambda f: (f[path].splitlines()[k - 1].strip(),), kind="line")


def chore_count_files(t: Tree, out: str) -> Chore:
    top, ext = t.rng.choice(("logs", "data", "notes", "projects")), t.rng.choice(EXTS)
    for _ in range(t.rng.randint(1, 3)):  # make sure there is something to count
        t.add(t.random_dir(top), t.unique_name(t.rng.choice(WORDS), ext), prose(t.rng, 1))
    return Chore(f"How many files with the extension .{ext} are there under {top}/ (at any depth)? Write the number to {out}.", f"find {top} -type f -name '*.{ext}' | wc -l > {out}", lambda f: (str(sum(p.startswith(top + "/") and p.endswith("." + ext) for p in f)),), kind="count_files")


def chore_distinct(t: Tree, out: str) -> Chore:
    rows = csv_rows(t.rng, t.rng.randint(8, 20))
    path = t.add(t.random_dir("data"), t.unique_name("export", "csv"), csv_text(rows))
    col = t.rng.choice(("city", "team"))
    k = CSV_HEADER.index(col)
    return Chore(f"Write the distinct values of the {col} column of {path} (no header), sorted alphabetically, one per line, to {out}.", f"tail -n +2 {path} | cut -d, -f{k + 1} | sort -u > {out}", lambda f: tuple(sorted({r[k] for r in rows})), kind="distinct")


def chore_request(t: Tree, out: str) -> Chore:
    rid = f"req-{t.rng.getrandbits(24):06x}x"  # the trailing x never occurs in filler ids
    service = t.rng.choice(SERVICES)
    path = t.add(t.random_dir("logs"), t.unique_name(service, "log"), "\n".join(log_lines(t.rng, service, t.rng.randint(6, 20), rid)) + "\n")
    return Chore(f"One log file under logs/ mentions the request id {rid}. Write its path (relative to /work) to {out}.", f"grep -rl {rid} logs > {out}", lambda f: (path,), paths=True, kind="request")


def chore_tail(t: Tree, out: str) -> Chore:
    service = t.rng.choice(SERVICES)
    path = t.add(t.random_dir("logs"), t.unique_name(service, "log"), "\n".join(log_lines(t.rng, service, t.rng.randint(6, 15))) + "\n")
    k = t.rng.randint(2, 4)
    return Chore(f"Write the last {k} lines of {path} to {out}, in reverse order (the last line first).", f"tail -n {k} {path} | tac > {out}", lambda f: tuple(x.strip() for x in reversed(f[path].splitlines()[-k:])), kind="tail")


def chore_sum(t: Tree, out: str) -> Chore:
    rows = csv_rows(t.rng, t.rng.randint(10, 20))
    path = t.add(t.random_dir("data"), t.unique_name("export", "csv"), csv_text(rows))
    col, val = "team", t.rng.choice(sorted({r[3] for r in rows}))
    num = t.rng.choice(("score", "visits"))
    k, m = CSV_HEADER.index(col) + 1, CSV_HEADER.index(num) + 1
    total = sum(int(r[m - 1]) for r in rows if r[k - 1] == val)
    return Chore(f"In {path}, add up the {num} column over the rows whose {col} is {val}; write the sum to {out}.", f"awk -F, '${k}==\"{val}\" {{s+=${m}}} END {{print s+0}}' {path} > {out}", lambda f: (str(total),), kind="sum")


def chore_top(t: Tree, out: str) -> Chore:
    while True:
        rows = csv_rows(t.rng, t.rng.randint(10, 20))
        city = t.rng.choice(sorted({r[2] for r in rows}))
        scores = sorted((int(r[4]), r[1]) for r in rows if r[2] == city)
        if len(scores) == 1 or scores[-1][0] != scores[-2][0]:
            break
    path = t.add(t.random_dir("data"), t.unique_name("export", "csv"), csv_text(rows))
    return Chore(f"In {path}, find the row with the highest score among the rows whose city is {city}; write that row's name to {out}.", f"awk -F, '$3==\"{city}\"' {path} | sort -t, -k5 -n | tail -n 1 | cut -d, -f2 > {out}", lambda f: (scores[-1][1],), kind="top")


CHORES = {
    1: ("find", "setting", "count", "line"),
    2: ("find", "setting", "count", "line", "count_files", "distinct", "request", "tail"),
    3: ("setting", "count", "count_files", "distinct", "request", "tail", "sum", "top"),
}
_MAKERS: dict[str, Callable[..., Chore]] = {
    "find": chore_find, "count": chore_count, "line": chore_line, "count_files": chore_count_files,
    "distinct": chore_distinct, "request": chore_request, "tail": chore_tail, "sum": chore_sum, "top": chore_top,
}
DEPTH = {1: 1, 2: 2, 3: 4}
#: Clues never go under logs/, where ``grep -rl <request id> logs`` must find one file only.
CLUE_DIRS = tuple(d for d in TOP_DIRS if d != "logs")
FILLER = {1: 12, 2: 30, 3: 60}


def min_horizon(difficulty: int) -> int:
    return 3


def n_stages(horizon: int) -> int:
    """Stages so that the expert's ``2K + 1`` turns come closest to ``horizon``."""
    return max(1, (horizon - 1) // 2)


def _filler(t: Tree, n: int) -> None:
    for _ in range(n):
        kind = t.rng.randrange(4)
        if kind == 0:
            s = t.rng.choice(SERVICES)
            t.add(t.random_dir("logs"), t.unique_name(s, "log"), "\n".join(log_lines(t.rng, s, t.rng.randint(4, 16))) + "\n")
        elif kind == 1:
            t.add(t.random_dir("data"), t.unique_name("export", "csv"), csv_text(csv_rows(t.rng, t.rng.randint(4, 12))))
        elif kind == 2:
            s = t.rng.choice(SERVICES)
            t.add(t.random_dir("etc"), t.unique_name(s, "conf"), conf_text(t.rng, s)[0])
        else:
            t.add(t.random_dir(), t.unique_name(t.rng.choice(WORDS), t.rng.choice(("txt", "md"))), prose(t.rng, t.rng.randint(2, 8)))


def generate(rng: random.Random, difficulty: int, horizon: int) -> Quest:
    """One full-vocabulary quest with ``n_stages(horizon)`` stages."""
    k = n_stages(horizon)
    t = Tree(rng, DEPTH[difficulty])
    _filler(t, FILLER[difficulty] + k)
    chores = []
    for i in range(1, k + 1):
        kind = rng.choice(CHORES[difficulty])
        out = f"answers/{i}.txt"
        chores.append(chore_setting(t, out, hidden=difficulty >= 2) if kind == "setting" else _MAKERS[kind](t, out))
    # Clues go in last, deepest first, so each clue can name where the next one is.
    hidden = difficulty >= 2
    commands: list[str] = []
    clue_paths: list[str] = [""] * (k + 1)
    nxt_ref = "This is the last stage: once every answer is written, call submit."
    for i in range(k, 0, -1):
        top = rng.choice(CLUE_DIRS)
        name = t.unique_name(rng.choice(("memo", "readme", "todo", "hint", "clue")), rng.choice(("txt", "md")))
        text = f"Stage {i} of {k}. {chores[i - 1].text}\n{nxt_ref}\n"
        clue_paths[i] = t.add(t.random_dir(top), name, text)
        nxt_ref = f"The next clue is the file named {name} somewhere under {top}/." if hidden else f"The next clue is {clue_paths[i]}."
    start = nxt_ref.replace("The next clue is", "The first clue is")
    t.files["answers/README"] = "Write answers/<stage>.txt here.\n"
    for i, chore in enumerate(chores, start=1):
        p = clue_paths[i]
        commands.append(f"cat $(find {p.split('/', 1)[0]} -name {p.rsplit('/', 1)[1]})" if hidden else f"cat {p}")
        commands.append(chore.command)
    files = dict(t.files)
    checks = tuple(FileCheck(f"answers/{i}.txt", c.expected(files), paths=c.paths) for i, c in enumerate(chores, start=1))
    prompt = (
        f"You are in /work, a server's file tree. Complete a quest of {k} stage{'s' * (k > 1)} using the shell. "
        f"{start} Each clue gives a chore whose answer goes into answers/<stage>.txt and says where the next clue is. "
        "When all answers are written, call submit."
    )
    return Quest(
        files=files,
        prompt=prompt,
        commands=tuple(commands),
        subgoals=checks,
        checks=checks,
        signature="full\n" + "\n".join(commands),
        meta={"stages": k, "kinds": tuple(c.kind for c in chores), "n_files": len(files)},
    )
