"""SQL (``agentrl/SQL-v0``): answer a question about a generated SQLite database with a query.

Source: procedurally generated, offline (:mod:`agentrl.envs.sql_gen`). Each task is a fresh
database (shop, school or library: a people table, an items table and a links table joining
them, 18-36 / 12-24 / 40-110 rows) and one natural-language question with a gold query, both a
pure function of (split, index, difficulty); train and test use disjoint seeds. Difficulty
tiers: 1 select/filter, 2 joins, 3 group by/aggregates, 4 subqueries (``difficulty=None``
mixes all four).

Tools: ``schema()`` (CREATE statements and row counts), ``sql(query)`` (a read-only query; a
text table of at most ``max_rows_shown`` rows, errors come back as text), ``answer(query)``
(the final query; ends the episode unless it fails to run).

Reward: 1.0 when the result of the answered query matches the gold query's result, else 0.
Match: same number of columns, in the order the question asks (names are ignored); numbers
compare as floats rounded to 2 decimals, text exactly; rows as a multiset, or as a list when
the question asks for an order ("oldest first", "largest total first"). Questions whose gold
answer is empty or depends on tie-breaking are never drawn.

Horizon: short (the expert takes 3 turns: ``schema``, ``sql(gold)``, ``answer(gold)``);
``max_turns`` defaults to 10.

Safety: model SQL never runs in this process. Each episode has a Python session in the sandbox
(``self.open_session("python")``) holding ``db.sqlite`` and a small trusted driver; a query
reaches it as a Python string literal (``repr``), never as code. The driver opens the file
read-only (``mode=ro``), accepts one statement starting with SELECT/WITH/VALUES/PRAGMA/EXPLAIN,
installs an authorizer that allows only reads, non-file functions and a few read-only pragmas
(ATTACH, DETACH, writes, schema changes, ``load_extension`` denied; extension loading is also
off), caps string/blob length, SQL length and attached databases with ``setlimit``, caps the
SQLite heap (``hard_heap_limit``), interrupts a query after ``query_timeout_s`` with a progress
handler, and fetches at most a bounded number of rows and characters. The sandbox's own limits
(wall time, memory, processes, no network, read-only root) are the outer wall. The gold result
is computed on the host by our own gold query on our own database; model text never reaches
host SQLite.
"""

from __future__ import annotations

import json
import random
from typing import Any

from agentrl.sandboxes import Session, Status

from .base import Policy, Task, ToolEnv, suggest
from .sql_gen import DOMAINS, build_database, make_question, normalize_rows, results_match, schema_text
from .tools import ToolOutput, tool

MARK = "@@agentrl-sql@@"
DB_FILE = "db.sqlite"
#: Max rows fetched for an answer (a result with more rows cannot match a gold answer).
ANSWER_MAX_ROWS = 500
#: Max characters of one cell sent back from the sandbox.
CELL_MAX_CHARS = 200

# The trusted driver, run once per session. Model text is only ever an argument to _agentrl_sql.
DRIVER = r"""
import json as _json, re as _re, sqlite3 as _sq, time as _time

_MARK = %(mark)r
_BUDGET = [%(budget)r]
_DEADLINE = [0.0]
_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "foreign_key_list"}
_FUNCS_DENIED = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
_FIRST = {"select", "with", "values", "pragma", "explain"}

def _agentrl_auth(action, a1, a2, db, trigger):
    if action in (_sq.SQLITE_SELECT, _sq.SQLITE_READ, 33):  # 33 = SQLITE_RECURSIVE
        return _sq.SQLITE_OK
    if action == 31:  # SQLITE_FUNCTION: a1 is None, a2 the function name
        return _sq.SQLITE_DENY if (a2 or "").lower() in _FUNCS_DENIED else _sq.SQLITE_OK
    if action == _sq.SQLITE_PRAGMA and (a1 or "").lower() in _PRAGMAS:  # a2: the table name
        return _sq.SQLITE_OK
    return _sq.SQLITE_DENY

def _agentrl_connect():
    con = _sq.connect("file:%(db)s?mode=ro", uri=True)
    con.execute("PRAGMA hard_heap_limit = %(heap)d")
    con.execute("PRAGMA query_only = 1")
    for limit, value in ((_sq.SQLITE_LIMIT_LENGTH, 1000000), (_sq.SQLITE_LIMIT_SQL_LENGTH, 100000),
                         (_sq.SQLITE_LIMIT_ATTACHED, 0), (_sq.SQLITE_LIMIT_COLUMN, 100),
                         (_sq.SQLITE_LIMIT_COMPOUND_SELECT, 50), (_sq.SQLITE_LIMIT_EXPR_DEPTH, 200)):
        con.setlimit(limit, value)
    con.set_authorizer(_agentrl_auth)
    con.set_progress_handler(lambda: 1 if _time.monotonic() > _DEADLINE[0] else 0, 1000)
    return con

_CON = _agentrl_connect()

def _agentrl_cell(v):
    if isinstance(v, (bytes, bytearray)):
        v = "x'" + bytes(v[:%(cell)d]).hex() + "'"
    if isinstance(v, str) and len(v) > %(cell)d:
        v = v[:%(cell)d] + "...[cut]"
    return v

def _agentrl_sql(query, max_rows):
    out = {"ok": False}
    try:
        stripped = _re.sub(r"^(\s+|--[^\n]*\n?|/\*.*?\*/)+", "", query, flags=_re.S)
        word = _re.match(r"[A-Za-z]*", stripped).group(0).lower()
        if word not in _FIRST:
            raise _sq.OperationalError("only read-only queries are allowed (SELECT, WITH, VALUES, PRAGMA, EXPLAIN)")
        _DEADLINE[0] = _time.monotonic() + _BUDGET[0]
        cur = _CON.execute(query)
        cols = [d[0] for d in cur.description or ()]
        rows = cur.fetchmany(max_rows + 1)
        cur.close()
        out = {"ok": True, "columns": cols, "rows": [[_agentrl_cell(v) for v in r] for r in rows[:max_rows]], "more": len(rows) > max_rows}
    except _sq.OperationalError as e:
        msg = str(e)
        if msg == "interrupted":
            msg = "the query ran longer than %(budget)g s and was stopped"
        out = {"ok": False, "error": msg}
    except (_sq.Error, ValueError, OverflowError, MemoryError) as e:
        out = {"ok": False, "error": type(e).__name__ + ": " + str(e)}
    print(_MARK + _json.dumps(out, default=str))
"""


def _format_table(columns: list[str], rows: list[list[Any]], more: bool, shown: int) -> str:
    """A plain-text table: header, rows (cells cut at 40 characters), a row count line."""
    def cell(v: Any) -> str:
        s = "NULL" if v is None else str(v)
        return s if len(s) <= 40 else s[:37] + "..."

    lines = [" | ".join(columns)] if columns else []
    lines += [" | ".join(cell(v) for v in r) for r in rows[:shown]]
    n = len(rows)
    if more or n > shown:
        lines.append(f"({'more than ' if more else ''}{n} rows; first {min(n, shown)} shown)")
    else:
        lines.append(f"({n} row{'s' * (n != 1)})")
    return "\n".join(lines)


class SQLEnv(ToolEnv):
    """Answer a question about a generated SQLite database (see the module docstring).

    Args:
        difficulty: 1 select/filter, 2 joins, 3 group by/aggregates, 4 subqueries, or None
            (default) to mix all four.
        domain: "shop", "school", "library" or None (default) for a random one per task.
        num_train_tasks, num_test_tasks: split sizes (tasks are generated lazily).
        query_timeout_s: a query is interrupted after this many seconds.
        max_rows_shown: rows shown by the ``sql`` tool.
        max_turns: default 10.
        **kwargs: the rest of :class:`~agentrl.envs.base.ToolEnv`'s options.
    """

    description = "SQLite questions (select, join, group by, subquery) on a generated database; reward by result match"

    def __init__(
        self,
        *,
        difficulty: int | None = None,
        domain: str | None = None,
        num_train_tasks: int = 50_000,
        num_test_tasks: int = 1_000,
        query_timeout_s: float = 2.0,
        max_rows_shown: int = 20,
        max_turns: int = 10,
        **kwargs: Any,
    ) -> None:
        if difficulty not in (None, 1, 2, 3, 4):
            raise ValueError(f"SQL: difficulty must be 1, 2, 3, 4 or None (mixed), got {difficulty!r}.")
        if domain is not None and domain not in DOMAINS:
            raise ValueError(f"SQL: domain must be one of {sorted(DOMAINS)} or None, got {domain!r}.{suggest(str(domain), list(DOMAINS))}")
        for name, n in (("num_train_tasks", num_train_tasks), ("num_test_tasks", num_test_tasks), ("max_rows_shown", max_rows_shown)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"SQL: {name} must be a positive int, got {n!r}.")
        if not isinstance(query_timeout_s, (int, float)) or not 0 < query_timeout_s <= 60:
            raise ValueError(f"SQL: query_timeout_s must be in (0, 60] seconds, got {query_timeout_s!r}.")
        super().__init__(max_turns=max_turns, **kwargs)
        self.difficulty, self.domain = difficulty, domain
        self._num_tasks = {"train": num_train_tasks, "test": num_test_tasks}
        self.query_timeout_s = float(query_timeout_s)
        self.max_rows_shown = max_rows_shown
        self._session: Session | None = None
        self._cache: dict[tuple[str, int], Task] = {}

    # ----------------------------------------------------------------- tasks
    def num_tasks(self, split: str) -> int:
        return self._num_tasks[split]

    def get_task(self, split: str, index: int) -> Task:
        if (split, index) not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[split, index] = self._generate(split, index)
        return self._cache[split, index]

    def _generate(self, split: str, index: int) -> Task:
        rng = random.Random(f"sql|{self.difficulty}|{self.domain}|{split}|{index}")  # str seeds are stable across runs
        dname = self.domain or rng.choice(sorted(DOMAINS))
        d = DOMAINS[dname]
        con = build_database(rng, d)
        try:
            q = make_question(rng, con, d, (self.difficulty,) if self.difficulty else (1, 2, 3, 4))
            gold = normalize_rows(con.execute(q.sql).fetchall())
            schema = schema_text(con)
            db = bytes(con.serialize())
        finally:
            con.close()
        order = " Row order matters: return the rows in the order asked." if q.ordered else " Row order does not matter."
        prompt = (
            f"The SQLite database {DB_FILE} has the tables {d.people}, {d.items} and {d.links}.\n"
            f"Question: {q.text}\n"
            f"Explore with schema and sql, then call answer with one SQL query whose result answers the question "
            f"(the columns asked for, in that order).{order}"
        )
        data = {"db": db, "schema": schema, "question": q, "gold": gold, "domain": dname}
        return Task(f"sql-{self.difficulty or 'mixed'}/{split}/{index}", split, index, prompt, data=data)

    # ----------------------------------------------------------------- episode
    async def setup(self, task: Task) -> None:
        self._session = await self.open_session("python", files={DB_FILE: task.data["db"]})
        await self._install_driver()

    async def _install_driver(self) -> None:
        assert self._session is not None
        code = DRIVER % {"mark": MARK, "budget": self.query_timeout_s, "db": DB_FILE, "heap": 256 << 20, "cell": CELL_MAX_CHARS}
        res = await self._session.exec(code, timeout_s=30)
        if res.status is not Status.OK:
            raise RuntimeError(f"SQL: the query driver failed to start in the sandbox ({res.status}): {res.stderr[-500:] or res.detail}")

    async def teardown(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _query(self, query: str, max_rows: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run ``query`` in the sandbox; returns (driver result, sandbox info)."""
        if self._session is None:
            raise RuntimeError("SQL: no database session; call reset() first.")
        res = await self._session.exec(f"_agentrl_sql({query!r}, {max_rows})", timeout_s=self.query_timeout_s + 5)
        sandbox = {k: v for k, v in res.to_dict().items() if k not in ("stdout", "stderr")}
        if res.extra.get("restarted") or res.status is not Status.OK:
            if res.extra.get("restarted"):  # the session lost the db and the driver: set them up again
                await self._session.put_files({DB_FILE: self.task.data["db"]})  # type: ignore[union-attr]
                await self._install_driver()
            return {"ok": False, "error": f"the query was stopped by the sandbox ({res.status}{': ' + res.detail if res.detail else ''})"}, sandbox
        line = next((ln for ln in reversed(res.stdout.split("\n")) if ln.startswith(MARK)), None)
        if line is None:
            return {"ok": False, "error": "no result came back from the database"}, sandbox
        return json.loads(line[len(MARK):]), sandbox

    @tool
    async def schema(self) -> ToolOutput:
        """Show the database's tables (CREATE statements) and their row counts."""
        return ToolOutput(self.task.data["schema"])  # type: ignore[union-attr]

    @tool
    async def sql(self, query: str) -> ToolOutput:
        """Run one read-only SQL query (SQLite) and see its result as a table.

        Args:
            query: one SELECT (or WITH ... SELECT) statement
        """
        out, sandbox = await self._query(query, self.max_rows_shown)
        if not out["ok"]:
            return ToolOutput(f"Error: {out['error']}", status="ok" if sandbox["status"] == "ok" else sandbox["status"], sandbox=sandbox)
        return ToolOutput(_format_table(out["columns"], out["rows"], out["more"], self.max_rows_shown), sandbox=sandbox)

    @tool
    async def answer(self, query: str) -> ToolOutput:
        """Submit the SQL query whose result answers the question; the episode ends.

        Args:
            query: one SELECT (or WITH ... SELECT) statement
        """
        out, sandbox = await self._query(query, ANSWER_MAX_ROWS)
        status = "ok" if sandbox["status"] == "ok" else sandbox["status"]
        if not out["ok"]:
            return ToolOutput(f"Error: your query failed, so it was not taken as the answer: {out['error']}", status=status, sandbox=sandbox)
        data = self.task.data  # type: ignore[union-attr]
        got = normalize_rows(out["rows"])
        ok = not out["more"] and results_match(got, data["gold"], ordered=data["question"].ordered)
        reason = "" if ok else (" (too many rows)" if out["more"] else "")
        return ToolOutput("correct" if ok else f"wrong{reason}", reward=1.0 if ok else 0.0, terminated=True, status=status, sandbox=sandbox, info={"tier": data["question"].tier})

    def expert(self) -> Policy:
        """Look at the schema, run the gold query, answer with it."""
        gold = self.task.data["question"].sql  # type: ignore[union-attr]
        actions = [self.call("schema"), self.call("sql", query=gold), self.call("answer", query=gold)]
        turn = 0

        def policy(obs: Any) -> str:
            nonlocal turn
            turn += 1
            return actions[min(turn, len(actions)) - 1]

        return policy
