"""Task generation for ``agentrl/SQL-v0``: a SQLite database and a question with a gold query.

Everything here is trusted code run on the host: it builds the database in memory from a seed,
runs *our own* gold query on it, and never sees model text. Model SQL runs only in the
sandbox (see :mod:`agentrl.envs.sql`).

Three domains share one shape, so every question template works on each: a *people* table
(``customers``/``students``/``members``), an *items* table (``products``/``courses``/``books``)
and a *links* table joining them (``orders``/``enrollments``/``loans``). Templates come in four
tiers: 1 select/filter, 2 joins, 3 group by/aggregates, 4 subqueries. A drawn question is kept
only when its gold result is non-empty and unambiguous (no ties where the question asks for
an order, a top row or a top-k).
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FIRST = ("Alice", "Bruno", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kira", "Luis", "Mara", "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Vera", "Wim", "Xenia", "Yusuf", "Zoe")
LAST = ("Abbott", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hoffmann", "Ito", "Jensen", "Kowalski", "Lopez", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Silva", "Tanaka", "Weber")
CITIES = ("Lisbon", "Oslo", "Lima", "Cairo", "Delhi", "Quito", "Dakar", "Hanoi", "Perth", "Porto")


@dataclass(frozen=True)
class Domain:
    """Table and column names of one domain, and the words its questions use."""

    people: str  # table
    person: str  # singular noun
    items: str
    item: str
    links: str
    label: str  # items' name column
    group: str  # items' category column
    groups: tuple[str, ...]
    num: str  # items' numeric column
    measure: str  # links' numeric column
    date: str  # links' date/term column
    year: str  # people's year column
    verb: str  # "<person> <verb> the <item> X"
    never: str  # "<people> who <never>"
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]

    @property
    def pfk(self) -> str:
        return self.person + "_id"

    @property
    def ifk(self) -> str:
        return self.item + "_id"


DOMAINS = {
    "shop": Domain(
        "customers", "customer", "products", "product", "orders", "name", "category",
        ("kitchen", "garden", "toys", "sports", "music", "office"), "price", "quantity", "order_date", "joined_year",
        "ordered", "never placed an order",
        ("Blue", "Smart", "Classic", "Mini", "Ultra", "Eco", "Pro", "Retro"),
        ("Kettle", "Lamp", "Backpack", "Puzzle", "Racket", "Guitar", "Blender", "Notebook", "Drone", "Chair"),
    ),
    "school": Domain(
        "students", "student", "courses", "course", "enrollments", "title", "department",
        ("math", "science", "arts", "history", "computing"), "credits", "grade", "term", "enrolled_year",
        "enrolled in", "never enrolled in a course",
        ("Intro to", "Advanced", "Applied", "Topics in", "Modern", "Foundations of"),
        ("Algebra", "Biology", "Chemistry", "History", "Poetry", "Databases", "Statistics", "Ethics", "Geology", "Music"),
    ),
    "library": Domain(
        "members", "member", "books", "book", "loans", "title", "genre",
        ("mystery", "fantasy", "history", "poetry", "science", "travel"), "pages", "days", "loan_date", "joined_year",
        "borrowed", "never borrowed a book",
        ("The Silent", "A Distant", "The Last", "Hidden", "Broken", "The Golden", "Northern"),
        ("River", "Garden", "Empire", "Voyage", "Secret", "Winter", "Harbor", "Machine", "Forest", "Letter"),
    ),
}


def build_database(rng: random.Random, d: Domain) -> sqlite3.Connection:
    """A fresh in-memory database of domain ``d`` filled from ``rng``."""
    con = sqlite3.connect(":memory:")
    num_type = "REAL" if d.num == "price" else "INTEGER"
    con.executescript(
        f"""
        CREATE TABLE {d.people} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL, age INTEGER NOT NULL, {d.year} INTEGER NOT NULL);
        CREATE TABLE {d.items} (id INTEGER PRIMARY KEY, {d.label} TEXT NOT NULL, {d.group} TEXT NOT NULL, {d.num} {num_type} NOT NULL);
        CREATE TABLE {d.links} (id INTEGER PRIMARY KEY, {d.pfk} INTEGER NOT NULL REFERENCES {d.people}(id),
            {d.ifk} INTEGER NOT NULL REFERENCES {d.items}(id), {d.measure} INTEGER NOT NULL, {d.date} TEXT NOT NULL);
        """
    )
    names = rng.sample([f"{f} {l}" for f in FIRST for l in LAST], rng.randint(18, 36))
    cities = rng.sample(CITIES, rng.randint(4, 7))
    people = [(i + 1, n, rng.choice(cities), rng.randint(18, 75), rng.randint(2015, 2024)) for i, n in enumerate(names)]
    labels = rng.sample([f"{a} {n}" for a in d.adjectives for n in d.nouns], rng.randint(12, 24))
    groups = rng.sample(d.groups, rng.randint(3, len(d.groups)))

    def num() -> float | int:
        return {"price": lambda: round(rng.uniform(2, 200), 2), "credits": lambda: rng.choice((2, 3, 4, 5, 6))}.get(d.num, lambda: rng.randint(90, 900))()

    items = [(i + 1, lab, rng.choice(groups), num()) for i, lab in enumerate(labels)]
    active = rng.sample(people, int(len(people) * rng.uniform(0.6, 0.9)))  # the rest never link
    links = []
    for i in range(rng.randint(40, 110)):
        year = rng.randint(2021, 2024)
        when = f"{year}-{rng.choice(('spring', 'fall'))}" if d.date == "term" else f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        measure = {"quantity": rng.randint(1, 5), "grade": rng.randint(50, 100)}.get(d.measure, rng.randint(1, 30))
        links.append((i + 1, rng.choice(active)[0], rng.choice(items)[0], measure, when))
    con.executemany(f"INSERT INTO {d.people} VALUES (?, ?, ?, ?, ?)", people)
    con.executemany(f"INSERT INTO {d.items} VALUES (?, ?, ?, ?)", items)
    con.executemany(f"INSERT INTO {d.links} VALUES (?, ?, ?, ?, ?)", links)
    con.commit()
    return con


# ----------------------------------------------------------------- question templates
@dataclass(frozen=True)
class Question:
    """A question, its gold query, and whether row order is part of the answer.

    ``tie_sql`` (top-k questions): the ranking key of the best k + 1 rows, best first; the
    question is ambiguous when the k-th and the (k+1)-th keys tie.
    """

    text: str
    sql: str
    ordered: bool = False
    tie_sql: str = ""
    tier: int = 1
    template: str = ""


def _one(con: sqlite3.Connection, sql: str) -> list[Any]:
    return [r[0] for r in con.execute(sql)]


def _pick(rng: random.Random, con: sqlite3.Connection, sql: str) -> Any:
    return rng.choice(_one(con, sql))


JOIN = "FROM {links} l JOIN {people} p ON l.{pfk} = p.id JOIN {items} i ON l.{ifk} = i.id"

Template = Callable[[random.Random, sqlite3.Connection, Domain], Question]
TEMPLATES: dict[int, dict[str, Template]] = {1: {}, 2: {}, 3: {}, 4: {}}


def template(tier: int) -> Callable[[Template], Template]:
    def add(fn: Template) -> Template:
        TEMPLATES[tier][fn.__name__] = fn
        return fn

    return add


@template(1)
def people_in_city(rng, con, d):
    city = _pick(rng, con, f"SELECT DISTINCT city FROM {d.people}")
    return Question(f"List the names of all {d.people} who live in {city}.", f"SELECT name FROM {d.people} WHERE city = '{city}'")


@template(1)
def count_older(rng, con, d):
    age = rng.randint(25, 60)
    return Question(f"How many {d.people} are older than {age}?", f"SELECT COUNT(*) FROM {d.people} WHERE age > {age}")


@template(1)
def items_in_group_above(rng, con, d):
    g = _pick(rng, con, f"SELECT DISTINCT {d.group} FROM {d.items}")
    x = _pick(rng, con, f"SELECT {d.num} FROM {d.items} WHERE {d.group} = '{g}'")
    return Question(f"List the {d.label}s of the {d.items} in the {d.group} '{g}' whose {d.num} is at least {x}.", f"SELECT {d.label} FROM {d.items} WHERE {d.group} = '{g}' AND {d.num} >= {x}")


@template(1)
def max_num_in_group(rng, con, d):
    g = _pick(rng, con, f"SELECT DISTINCT {d.group} FROM {d.items}")
    return Question(f"What is the highest {d.num} of any {d.item} in the {d.group} '{g}'?", f"SELECT MAX({d.num}) FROM {d.items} WHERE {d.group} = '{g}'")


@template(1)
def oldest_k(rng, con, d):
    k = rng.randint(2, 4)
    return Question(
        f"List the names and ages of the {k} oldest {d.people}, oldest first.",
        f"SELECT name, age FROM {d.people} ORDER BY age DESC LIMIT {k}",
        ordered=True,
        tie_sql=f"SELECT age FROM {d.people} ORDER BY age DESC LIMIT {k + 1}",
    )


@template(2)
def people_who_linked_item(rng, con, d):
    lab = _pick(rng, con, f"SELECT DISTINCT i.{d.label} " + JOIN.format(**_fmt(d)))
    return Question(f"List the distinct names of the {d.people} who {d.verb} the {d.item} '{lab}'.", f"SELECT DISTINCT p.name {JOIN.format(**_fmt(d))} WHERE i.{d.label} = '{lab}'")


@template(2)
def items_of_person(rng, con, d):
    name = _pick(rng, con, "SELECT DISTINCT p.name " + JOIN.format(**_fmt(d)))
    return Question(f"List the distinct {d.label}s of the {d.items} that the {d.person} {name} {d.verb}.", f"SELECT DISTINCT i.{d.label} {JOIN.format(**_fmt(d))} WHERE p.name = '{name}'")


@template(2)
def count_links_from_city(rng, con, d):
    city = _pick(rng, con, f"SELECT DISTINCT city FROM {d.people}")
    return Question(f"How many rows of {d.links} belong to {d.people} who live in {city}?", f"SELECT COUNT(*) FROM {d.links} l JOIN {d.people} p ON l.{d.pfk} = p.id WHERE p.city = '{city}'")


@template(2)
def total_measure_in_group(rng, con, d):
    g = _pick(rng, con, f"SELECT DISTINCT i.{d.group} " + JOIN.format(**_fmt(d)))
    return Question(f"What is the total {d.measure} over all {d.links} of {d.items} in the {d.group} '{g}'?", f"SELECT SUM(l.{d.measure}) {JOIN.format(**_fmt(d))} WHERE i.{d.group} = '{g}'")


@template(3)
def count_per_city(rng, con, d):
    return Question(f"For each city, how many {d.people} live there? Return the city and the count.", f"SELECT city, COUNT(*) FROM {d.people} GROUP BY city")


@template(3)
def avg_num_per_group(rng, con, d):
    return Question(
        f"For each {d.group}, what is the average {d.num} of its {d.items}, rounded to 2 decimals? Return the {d.group} and the average.",
        f"SELECT {d.group}, ROUND(AVG({d.num}), 2) FROM {d.items} GROUP BY {d.group}",
    )


@template(3)
def total_measure_per_group(rng, con, d):
    return Question(
        f"For each {d.group}, what is the total {d.measure} over all {d.links} of its {d.items}? Return the {d.group} and the total, largest total first.",
        f"SELECT i.{d.group}, SUM(l.{d.measure}) AS total {JOIN.format(**_fmt(d))} GROUP BY i.{d.group} ORDER BY total DESC",
        ordered=True,
    )


@template(3)
def groups_with_many_items(rng, con, d):
    counts = sorted(_one(con, f"SELECT COUNT(*) FROM {d.items} GROUP BY {d.group}"))
    k = counts[len(counts) // 2] - 1
    return Question(f"Which {d.group}s have more than {k} {d.items}? Return the {d.group} names.", f"SELECT {d.group} FROM {d.items} GROUP BY {d.group} HAVING COUNT(*) > {k}")


@template(3)
def top_city_by_links(rng, con, d):
    return Question(
        f"The {d.people} of which city have the most {d.links} in total? Return the city.",
        f"SELECT p.city FROM {d.links} l JOIN {d.people} p ON l.{d.pfk} = p.id GROUP BY p.city ORDER BY COUNT(*) DESC LIMIT 1",
        tie_sql=f"SELECT COUNT(*) FROM {d.links} l JOIN {d.people} p ON l.{d.pfk} = p.id GROUP BY p.city ORDER BY 1 DESC LIMIT 2",
    )


@template(4)
def people_never_linked(rng, con, d):
    return Question(f"List the names of the {d.people} who {d.never}.", f"SELECT name FROM {d.people} WHERE id NOT IN (SELECT {d.pfk} FROM {d.links})")


@template(4)
def items_above_average(rng, con, d):
    return Question(
        f"List the {d.label}s of the {d.items} whose {d.num} is above the average {d.num} of all {d.items}.",
        f"SELECT {d.label} FROM {d.items} WHERE {d.num} > (SELECT AVG({d.num}) FROM {d.items})",
    )


@template(4)
def person_with_largest_total(rng, con, d):
    return Question(
        f"What is the name of the {d.person} with the largest total {d.measure} over their {d.links}?",
        f"SELECT p.name FROM {d.people} p JOIN {d.links} l ON l.{d.pfk} = p.id GROUP BY p.id ORDER BY SUM(l.{d.measure}) DESC LIMIT 1",
        tie_sql=f"SELECT SUM({d.measure}) FROM {d.links} GROUP BY {d.pfk} ORDER BY 1 DESC LIMIT 2",
    )


@template(4)
def people_above_average_total(rng, con, d):
    return Question(
        f"List the names of the {d.people} whose total {d.measure} over their {d.links} is above the average of that total "
        f"(the average over {d.people} with at least one row in {d.links}).",
        f"SELECT p.name FROM {d.people} p JOIN {d.links} l ON l.{d.pfk} = p.id GROUP BY p.id HAVING SUM(l.{d.measure}) > "
        f"(SELECT AVG(t) FROM (SELECT SUM({d.measure}) AS t FROM {d.links} GROUP BY {d.pfk}))",
    )


@template(4)
def items_not_linked_from_city(rng, con, d):
    city = _pick(rng, con, f"SELECT DISTINCT city FROM {d.people}")
    return Question(
        f"List the {d.label}s of the {d.items} that no {d.person} living in {city} {d.verb}.",
        f"SELECT {d.label} FROM {d.items} WHERE id NOT IN (SELECT l.{d.ifk} FROM {d.links} l JOIN {d.people} p ON l.{d.pfk} = p.id WHERE p.city = '{city}')",
    )


def _fmt(d: Domain) -> dict[str, str]:
    return {"links": d.links, "people": d.people, "items": d.items, "pfk": d.pfk, "ifk": d.ifk}


# ----------------------------------------------------------------- checks
def ambiguous(con: sqlite3.Connection, q: Question) -> bool:
    """True when the gold answer is empty, too long, or depends on how ties are broken."""
    rows = con.execute(q.sql).fetchall()
    if not rows or len(rows) > 40 or rows == [(None,)] or rows == [(0,)]:
        return True
    if q.tie_sql:
        keys = _one(con, q.tie_sql)
        if len(keys) >= 2 and keys[-1] == keys[-2]:
            return True
    if q.ordered:
        keys = [r[-1] for r in rows]
        if len(set(keys)) != len(keys):
            return True
    return False


def make_question(rng: random.Random, con: sqlite3.Connection, d: Domain, tiers: tuple[int, ...]) -> Question:
    """Draw templates until one gives an unambiguous, non-empty gold answer."""
    for _ in range(200):
        tier = rng.choice(tiers)
        name = rng.choice(sorted(TEMPLATES[tier]))
        q = TEMPLATES[tier][name](rng, con, d)
        q = Question(q.text, q.sql, q.ordered, q.tie_sql, tier, name)
        if not ambiguous(con, q):
            return q
    raise RuntimeError(f"no unambiguous question for tiers {tiers} in 200 draws")  # pragma: no cover


def schema_text(con: sqlite3.Connection) -> str:
    """CREATE statements and row counts, as the ``schema`` tool shows them."""
    out = []
    for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        n = con.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
        out.append(f"{' '.join(sql.split())};  -- {n} rows")
    return "\n".join(out)


# ----------------------------------------------------------------- result matching
def normalize_value(v: Any) -> Any:
    """Numbers compare as floats rounded to 2 decimals (1 == 1.0, 2.345 ~ 2.35); text exactly;
    NULL as None; blobs by their hex."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        r = round(float(v), 2)
        return 0.0 if r == 0 else r
    if isinstance(v, (bytes, bytearray)):
        return "x'" + bytes(v).hex() + "'"
    return v


def normalize_rows(rows: list[list[Any]] | list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(normalize_value(v) for v in r) for r in rows]


def results_match(got: list[tuple[Any, ...]], gold: list[tuple[Any, ...]], *, ordered: bool) -> bool:
    """Same rows (normalized), as a list when ``ordered`` else as a multiset; columns must be
    the ones asked for, in the order asked (column names are ignored)."""
    if ordered:
        return got == gold
    return sorted(map(repr, got)) == sorted(map(repr, gold))
