"""SQL built from LLM or tool output is parameterized: hostile text is stored verbatim, tables survive.

Two kinds of proof:
- dynamic: the course LLM answers with SQL-injection text (quotes, `'); DROP TABLE ...; --`,
  backslashes), it flows through Lab 01's save_to_db (SQLModel on SQLite) and Lab 03's
  checkpointer (PostgresSaver), and the stored value is read back byte for byte;
- static: no SQL entry point in solutions/, labs/ or labkit/ is handed SQL assembled by an
  f-string, `+`, `%` or str.format (tests/sql_scan.py), and the scan itself is shown to catch them.
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid

import psycopg
import pytest
from temporalio.client import Client

from lab_stack import Lab01Stack, analyze_input, graded_copy
from labkit import course, postgres, proc
from labkit.services import CourseLLM
from sql_scan import built_sql

pytestmark = pytest.mark.timeout(90)

REPO = course.REPO
HOSTILE = "Robert'); DROP TABLE analysis; DROP TABLE checkpoints; -- \"quoted\" \\ back\\slash $$ %s {0} ?"


# --- static ----------------------------------------------------------------------------------------

def test_no_sql_is_built_from_variables_in_the_course_code():
    """Given every Python file in solutions/, labs/ and labkit/,
    When the AST scan looks at each execute()/executemany()/executescript()/text() call,
    Then none gets SQL built by an f-string, concatenation, %-formatting or str.format."""
    files = [path for root in ("solutions", "labs", "labkit") for path in sorted((REPO / root).rglob("*.py"))]
    assert len(files) > 50, f"observed {len(files)} files; expected the course's code to be found"
    findings = [str(finding) for path in files for finding in built_sql(path)]
    assert not findings, ("observed SQL built from variables (use ? / %s parameters, or psycopg's "
                          "sql.Identifier for names):\n" + "\n".join(findings))


SCANNER_MUST_CATCH = '''
def f(db, name, where, sa_text):
    db.execute(f"SELECT * FROM t WHERE name = '{name}'")
    db.execute("SELECT * FROM t WHERE name = '" + name + "'")
    db.execute("SELECT * FROM t WHERE name = '%s'" % name)
    db.execute("SELECT * FROM t WHERE name = '{}'".format(name))
    query = "SELECT * FROM t WHERE id > ?"
    query += f" AND {where}"
    db.execute(query + " ORDER BY id")
    import sqlalchemy
    sqlalchemy.text(f"DELETE FROM t WHERE name = '{name}'")
'''
SCANNER_MUST_PASS = '''
from psycopg import sql
def f(db, name, tool_sql):
    db.execute("SELECT * FROM t WHERE name = ?", (name,))
    query = ("SELECT * FROM t "
             "WHERE id > ?")
    query += " AND caller = ?"
    db.execute(query + " ORDER BY id", (1, name))
    db.execute(f"SELECT 1")
    db.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
    db.execute(tool_sql)  # a whole statement passed through (a tool's input), reviewed on its own
'''


def test_the_sql_scan_catches_what_it_claims_to(tmp_path):
    """Given code with every kind of built SQL, and code with only parameterized or fixed SQL,
    When the scan runs on each, Then it flags the 6 built statements and nothing in the other."""
    (tmp_path / "bad.py").write_text(SCANNER_MUST_CATCH)
    (tmp_path / "good.py").write_text(SCANNER_MUST_PASS)
    caught = [finding.line for finding in built_sql(tmp_path / "bad.py")]
    assert caught == [3, 4, 5, 6, 9, 11], f"observed flagged lines {caught}; expected [3, 4, 5, 6, 9, 11]"
    passed = [str(finding) for finding in built_sql(tmp_path / "good.py")]
    assert passed == [], f"observed false alarms: {passed}"


# --- Lab 01: the reply goes through parse_json into save_to_db ---------------------------------------

def test_lab01_stores_a_hostile_llm_reply_verbatim(tmp_path):
    """Given Lab 01's solution and a course LLM whose analysis is SQL-injection text (summary and topics),
    When an AnalyzeWorkflow saves it with save_to_db,
    Then the row holds the text exactly as the LLM wrote it, and the analysis table still exists and
      takes a second, ordinary row."""
    topics = ["it's", 'say "hi"', "x'); DELETE FROM analysis; --"]
    stack = Lab01Stack(tmp_path).start()
    try:
        marker = f"[HOSTILE-{uuid.uuid4().hex[:6]}]"
        stack.llm.push_rules([{"name": "hostile-analysis", "match": re.escape(marker), "reply_json": {
            "sentiment": "negative", "summary": HOSTILE, "topics": topics}}])
        hostile_id, plain_id = asyncio.run(run_two_workflows(stack, marker))
    finally:
        stack.stop()
    rows = stack.rows(hostile_id)
    assert [row[2] for row in rows] == [HOSTILE], f"observed summary {rows}; expected exactly {HOSTILE!r}"
    import sqlite3

    with sqlite3.connect(stack.db_path) as db:
        stored_topics = db.execute("SELECT topics FROM analysis WHERE workflow_id = ?", (hostile_id,)).fetchone()
        count = db.execute("SELECT COUNT(*) FROM analysis").fetchone()[0]
    assert stored_topics == (",".join(topics),), f"observed topics {stored_topics}; expected {','.join(topics)!r}"
    assert count == 2 and stack.rows(plain_id), f"observed {count} rows; expected the hostile row and the plain one"


async def run_two_workflows(stack: Lab01Stack, marker: str) -> tuple[str, str]:
    client = await Client.connect(stack.temporal.address)
    await stack.start_worker(client)
    ids = []
    for text in (marker, "[plain]"):
        handle = await client.start_workflow("AnalyzeWorkflow", analyze_input(text), task_queue=stack.harness.task_queue,
                                             id=f"sql-{uuid.uuid4().hex[:8]}")
        ids.append(handle)
    await asyncio.wait_for(asyncio.gather(*(handle.result() for handle in ids)), 40)
    return ids[0].id, ids[1].id


# --- Lab 03: the reply becomes graph state in PostgreSQL's checkpoint tables --------------------------

CHECKPOINT_TABLES = {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"}


def test_lab03_checkpoints_a_hostile_llm_reply_verbatim(tmp_path):
    """Given Lab 03's solution on PostgreSQL, a course LLM whose fetch reply is SQL-injection text, and a
      thread id that is SQL-injection text too,
    When the graph runs to the end,
    Then the thread's latest checkpoint holds the reply exactly (notes), its 5 checkpoints are found
      under the hostile thread id, and all four checkpoint tables still exist."""
    pg = postgres.PostgresServer(tmp_path / "pg")
    llm = CourseLLM(tmp_path / "llm", rules_files=[course.COURSE_TOML])
    run = None
    thread = "t'); DROP TABLE checkpoints; --"
    try:
        for server in (pg, llm):
            server.launch()
        url = pg.wait_ready().create_database("sql_hostile")
        llm.wait_ready().push_rules([{"name": "hostile-fetch", "match": r"\[lab03 node=fetch\]", "reply": HOSTILE}])
        target = graded_copy("03", tmp_path)
        env = target.python_env(DATABASE_URL=url, OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="lab-sql-hostile")
        run = proc.start([sys.executable, "-m", target.module("cli"), "run", "--thread", thread], name="run",
                         log_path=tmp_path / "run.log", env=env, cwd=tmp_path)
        code = run.wait(60)
        assert code == 0, f"observed: the run exited {code}; log:\n{run.output()[-2000:]}"
        notes, steps, tables = read_back(url, thread)
    finally:
        if run is not None:
            run.stop()
        llm.stop()
        pg.stop()
    assert notes == HOSTILE, f"observed notes {notes!r}; expected exactly {HOSTILE!r}"
    assert steps == [-1, 0, 1, 2, 3], f"observed checkpoint steps {steps} under the hostile thread id"
    assert CHECKPOINT_TABLES <= tables, f"observed tables {sorted(tables)}; expected {sorted(CHECKPOINT_TABLES)}"


def read_back(url: str, thread: str) -> tuple[str | None, list[int], set[str]]:
    """The thread's notes as the checkpointer returns them, its steps and the tables, by plain SQL."""
    from langgraph.checkpoint.postgres import PostgresSaver

    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        tables = {name for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        steps = [step for (step,) in conn.execute(
            "SELECT (metadata->>'step')::int FROM checkpoints WHERE thread_id = %s ORDER BY checkpoint_id",
            (thread,)).fetchall()]
        latest = PostgresSaver(conn).get_tuple({"configurable": {"thread_id": thread}})
    notes = latest.checkpoint["channel_values"].get("notes") if latest else None
    return notes, steps, tables
