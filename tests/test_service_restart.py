"""restart() on the kit's servers: the same port, the same state, a new process.

The server-fault tests (tests/test_server_faults.py) restart a server under a running lab; these
pin down what restart() itself promises, for each server, without any lab in the way:
  Temporal (with a db file)  same port, the workflow still there;
  the course LLM             same port, the same ledger, the same admin token and pushed rules;
  PostgreSQL                 same port, committed rows kept, the old connection cut.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import openai
import psycopg
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from procs import running
from labkit import postgres
from labkit.llm import Ledger
from labkit.services import HOST, CourseLLM, TemporalServer, port_open


async def start_idle_workflow(address: str, workflow_id: str) -> None:
    client = await Client.connect(address)
    await client.start_workflow("NobodyRunsThis", "payload", id=workflow_id, task_queue=f"tq-{workflow_id}")


async def status_of(address: str, workflow_id: str) -> WorkflowExecutionStatus:
    client = await Client.connect(address)
    return (await client.get_workflow_handle(workflow_id).describe()).status


def test_temporal_restart_keeps_the_port_and_the_workflows(tmp_path):
    """Given a Temporal dev server with a db file and a running workflow,
    When restart() is called,
    Then a new process answers on the same port and the workflow is still RUNNING."""
    server = TemporalServer(tmp_path, ui_port=None, db_file=tmp_path / "temporal.db").start()
    try:
        workflow_id = f"restart-{uuid.uuid4().hex[:8]}"
        asyncio.run(start_idle_workflow(server.address, workflow_id))
        port, old_pid = server.port, server.process.pid

        server.restart()

        assert not running(old_pid), f"observed: the old server (pid {old_pid}) still runs; expected: it stopped"
        assert (server.port, server.process.pid != old_pid) == (port, True), \
            f"observed: port {server.port}, pid {server.process.pid}; expected: port {port}, a new pid"
        status = asyncio.run(status_of(server.address, workflow_id))
        assert status == WorkflowExecutionStatus.RUNNING, f"observed: {status}; expected: RUNNING after the restart"
    finally:
        server.stop()


def ask(llm: CourseLLM, key: str, prompt: str) -> str:
    client = openai.OpenAI(base_url=llm.base_url, api_key=key, max_retries=0, timeout=10)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return reply.choices[0].message.content


def test_course_llm_restart_keeps_port_ledger_and_pushed_rules(tmp_path):
    """Given a course LLM that answered one request by a rule pushed at run time,
    When restart() is called,
    Then it answers on the same port, its ledger (read over HTTP) still holds the first request,
      the pushed rule still answers, and student code still cannot push rules without the token."""
    llm = CourseLLM(tmp_path).start()
    try:
        key = f"lab-restart-{uuid.uuid4().hex[:6]}"
        llm.push_rules([{"name": "pushed", "match": "ping", "reply": "pong"}])
        assert ask(llm, key, "ping") == "pong"
        port, old_pid = llm.port, llm.process.pid

        llm.restart()

        assert (llm.port, llm.process.pid != old_pid) == (port, True), \
            f"observed: port {llm.port}, pid {llm.process.pid}; expected: port {port}, a new pid"
        assert ask(llm, key, "ping again") == "pong", "observed: the pushed rule was lost in the restart"
        prompts = [entry.prompt for entry in llm.ledger().entries(caller=key)]
        assert prompts == ["ping", "ping again"], f"observed ledger: {prompts}; expected both requests"
        refused = httpx.post(f"http://{HOST}:{llm.port}/_rules", json={"rules": []}, timeout=5)
        assert refused.status_code == 401, f"observed: {refused.status_code}; expected 401 without the token"
    finally:
        llm.stop()
    assert [e.prompt for e in Ledger(llm.ledger_dir).entries(caller=key)] == ["ping", "ping again"]


def test_course_llm_stopped_refuses_connections_and_start_brings_it_back(tmp_path):
    """Given a course LLM that was stopped (its port refuses),
    When start() is called again on the same object,
    Then it waits for the new process (not the old 'ready' flag) and answers on the same port."""
    llm = CourseLLM(tmp_path).start()
    try:
        llm.stop()
        assert not port_open(llm.port), "observed: the port still accepts; expected: refused while stopped"
        with pytest.raises(openai.APIConnectionError):
            ask(llm, "lab-down", "anyone there?")
        llm.start()
        assert ask(llm, "lab-down", "anyone there?") == "OK."
    finally:
        llm.stop()


def test_postgres_restart_keeps_port_and_rows_and_cuts_old_sessions(tmp_path):
    """Given a throwaway PostgreSQL with a committed row and an open connection,
    When restart() is called,
    Then the old connection fails on its next query (the server cut it), and a new connection to
      the same port sees the row."""
    server = postgres.PostgresServer(tmp_path / "pg").start()
    try:
        url = server.create_database("restart_check")
        held = psycopg.connect(url, autocommit=True)
        held.execute("CREATE TABLE kept (note text)")
        held.execute("INSERT INTO kept VALUES ('committed before the restart')")
        port, old_pid = server.port, server.process.pid

        server.restart()

        assert (server.port, server.process.pid != old_pid) == (port, True), \
            f"observed: port {server.port}, pid {server.process.pid}; expected: port {port}, a new pid"
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        held.close()
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT note FROM kept").fetchall()
        assert rows == [("committed before the restart",)], f"observed rows: {rows}"
    finally:
        server.stop()
