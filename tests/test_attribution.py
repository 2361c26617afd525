"""labkit.attribution ties each request and each activity attempt to the code that made it.

A check started program (exec or fork server) sends, with every httpx request, the header
X-Lab-Origin naming its program, the Temporal activity attempt and the LangGraph node it runs in;
a Temporal worker's every activity attempt is logged, including attempts cut short by a kill.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from temporalio.client import Client

from labkit import attribution, prefork, proc
from labkit.services import TemporalServer


class Capture:
    """A local HTTP server that records each request's X-Lab-Origin header and path."""

    def __init__(self):
        self.seen: list[tuple[str, dict | None]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                capture.seen.append((self.path, attribution.parse(self.headers.get(attribution.HEADER))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, path: str) -> list[dict | None]:
        return [origin for seen, origin in self.seen if seen == path]


@pytest.fixture
def capture():
    server = Capture()
    yield server
    server.server.shutdown()


def write_package(root: Path, files: dict[str, str]) -> None:
    package = root / "attrpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, text in files.items():
        (package / name).write_text(textwrap.dedent(text))


PLAIN = """
    import os, httpx
    httpx.get(os.environ["CAPTURE"] + "/plain")
    print("done")
"""



@pytest.fixture(autouse=True)
def stop_the_programs_each_test_started():
    """A program that exits by itself stays registered with labkit.proc until it is stopped (its
    process group may outlive it): stop what each test started, so no later test in this
    interpreter finds it in proc.live()."""
    before = {program.pid for program in proc.live()}
    yield
    for program in proc.live():
        if program.pid not in before:
            program.stop()

def test_a_student_program_sends_its_origin_with_every_request(tmp_path, capture):
    """Given a program started as student code, when it sends a request outside any activity,
    then the header names its program and pid, and no activity or node."""
    write_package(tmp_path, {"plain.py": PLAIN})
    env = {"PYTHONPATH": str(tmp_path), "CAPTURE": capture.url, "PATH": "/usr/bin:/bin"}
    program = proc.start([sys.executable, "-m", "attrpkg.plain"], name="plain", log_path=tmp_path / "plain.log",
                         env=env, cwd=tmp_path, student=True)
    assert program.wait(60) == 0, program.output()
    (origin,) = capture.of("/plain")
    assert origin == {"pid": program.pid, "program": "attrpkg.plain", "activity": None, "node": None, "thread": None}


def test_attribution_can_be_turned_off(tmp_path, capture):
    write_package(tmp_path, {"plain.py": PLAIN})
    env = {"PYTHONPATH": str(tmp_path), "CAPTURE": capture.url, attribution.ENABLE_ENV: "0"}
    program = proc.start([sys.executable, "-m", "attrpkg.plain"], name="plain", log_path=tmp_path / "plain.log",
                         env=env, cwd=tmp_path, student=True)
    assert program.wait(60) == 0, program.output()
    assert capture.of("/plain") == [None]


GRAPH = """
    import os, httpx
    from typing import TypedDict
    from langgraph.graph import StateGraph, START, END

    class State(TypedDict):
        n: int

    def fetch(state):
        httpx.get(os.environ["CAPTURE"] + "/node")
        return {"n": state["n"] + 1}

    builder = StateGraph(State)
    builder.add_node("fetch", fetch)
    builder.add_edge(START, "fetch")
    builder.add_edge("fetch", END)
    builder.compile().invoke({"n": 0}, {"configurable": {"thread_id": "thread-7"}})
"""


def test_a_langgraph_node_is_named_in_the_origin(tmp_path, capture):
    """Given a graph whose node sends a request, when the program runs forked from the fork server,
    then the origin names the node and the thread id the graph ran with."""
    write_package(tmp_path, {"graph.py": GRAPH})
    env = {"PYTHONPATH": str(tmp_path), "CAPTURE": capture.url}
    forks = prefork.ForkServer(tmp_path / "forks", ["langgraph.graph"], env=env).launch().wait_ready()
    try:
        child = forks.start("attrpkg.graph", [], name="graph", log_path=tmp_path / "graph.log", env=env, cwd=tmp_path)
        assert child.wait(60) == 0, child.output()
    finally:
        forks.stop()
    (origin,) = capture.of("/node")
    assert origin["node"] == "fetch" and origin["program"] == "attrpkg.graph" and origin["activity"] is None
    assert origin["thread"] == "thread-7", origin


WORKER = """
    import asyncio, os
    from datetime import timedelta
    from temporalio import activity, workflow
    with workflow.unsafe.imports_passed_through():
        import httpx
    from temporalio.client import Client
    from temporalio.common import RetryPolicy
    from temporalio.worker import Worker

    @activity.defn
    def sync_step(name: str) -> str:
        httpx.get(os.environ["CAPTURE"] + "/sync")
        if activity.info().attempt == 1:
            raise RuntimeError("first attempt fails")
        return name

    @activity.defn
    async def async_step(name: str) -> str:
        async with httpx.AsyncClient() as client:
            await client.get(os.environ["CAPTURE"] + "/async")
        return name

    @workflow.defn
    class Steps:
        @workflow.run
        async def run(self, name: str) -> str:
            policy = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3)
            first = await workflow.execute_activity(sync_step, name, start_to_close_timeout=timedelta(seconds=30),
                                                    retry_policy=policy)
            return await workflow.execute_activity(async_step, first, start_to_close_timeout=timedelta(seconds=30))

    async def main():
        from concurrent.futures import ThreadPoolExecutor
        client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
        with ThreadPoolExecutor(4) as pool:
            await Worker(client, task_queue=os.environ["TASK_QUEUE"], workflows=[Steps],
                         activities=[sync_step, async_step], activity_executor=pool).run()

    if __name__ == "__main__":
        asyncio.run(main())
"""


def test_every_activity_attempt_is_logged_and_named_in_its_requests(tmp_path, capture):
    """Given a worker whose sync activity fails on attempt 1 and whose async activity follows, when
    a workflow runs, then the attempt log holds both attempts of sync_step (failed, completed) and
    one of async_step, and each request's origin names its activity type and attempt (the thread of
    a sync activity too)."""
    write_package(tmp_path, {"worker.py": WORKER})
    server = TemporalServer(tmp_path / "temporal", ui_port=None).start()
    log = tmp_path / "attempts.jsonl"
    queue = f"attr-{uuid.uuid4().hex[:8]}"
    env = {"PYTHONPATH": str(tmp_path), "CAPTURE": capture.url, "TEMPORAL_ADDRESS": server.address,
           "TASK_QUEUE": queue, attribution.ATTEMPT_LOG_ENV: str(log)}
    worker = proc.start([sys.executable, "-m", "attrpkg.worker"], name="worker", log_path=tmp_path / "worker.log",
                        env=env, cwd=tmp_path, student=True)

    async def run() -> str:
        client = await Client.connect(server.address)
        return await client.execute_workflow("Steps", "x", id=f"wf-{queue}", task_queue=queue)

    try:
        assert asyncio.run(asyncio.wait_for(run(), 90)) == "x", worker.output()
    finally:
        worker.stop()
        server.stop()
    attempts = attribution.read_attempts(log)
    assert [(a.activity_type, a.attempt, a.outcome) for a in attempts] == [
        ("sync_step", 1, "failed"), ("sync_step", 2, "completed"), ("async_step", 1, "completed")]
    assert all(a.pid == worker.pid and a.workflow_id == f"wf-{queue}" and a.ended >= a.started for a in attempts)
    assert "first attempt fails" in attempts[0].error
    assert [(o["activity"]["type"], o["activity"]["attempt"]) for o in capture.of("/sync")] == [
        ("sync_step", 1), ("sync_step", 2)]
    assert [o["activity"]["type"] for o in capture.of("/async")] == ["async_step"]


def test_an_attempt_cut_short_by_a_kill_has_no_end(tmp_path):
    """Given a log whose last attempt started but never ended (the worker was SIGKILLed), when read,
    then that attempt is unfinished, and a torn last line is ignored."""
    log = tmp_path / "attempts.jsonl"
    base = {"pid": 7, "workflow_id": "w", "run_id": "r", "activity_id": "1", "activity_type": "call_llm"}
    lines = [{"event": "start", **base, "attempt": 1, "at": 1.0},
             {"event": "end", **base, "attempt": 1, "at": 2.0, "outcome": "failed", "error": "boom"},
             {"event": "start", **base, "attempt": 2, "at": 3.0}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"event": "end", "pi')
    first, second = attribution.read_attempts(log)
    assert first.finished and first.outcome == "failed" and first.ended == 2.0
    assert not second.finished and second.attempt == 2 and second.outcome is None


ASK = """
    import os, openai
    client = openai.OpenAI(max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
"""


def test_the_openai_clients_requests_reach_the_ledger_with_their_origin(tmp_path):
    """Given a program that asks the course LLM through the real openai client (which sends through
    its own HTTP stack), when it runs as student code, then the ledger entry names its program."""
    from labkit import course
    from labkit.services import CourseLLM

    write_package(tmp_path, {"ask.py": ASK})
    llm = CourseLLM(tmp_path / "llm", rules_files=[course.COURSE_TOML]).start()
    key = f"lab-{uuid.uuid4().hex[:8]}"
    try:
        env = {"PYTHONPATH": str(tmp_path), "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": key}
        program = proc.start([sys.executable, "-m", "attrpkg.ask"], name="ask", log_path=tmp_path / "ask.log",
                             env=env, cwd=tmp_path, student=True)
        assert program.wait(60) == 0, program.output()
        (entry,) = llm.ledger().entries(caller=key)
    finally:
        llm.stop()
    assert entry.origin["program"] == "attrpkg.ask" and entry.origin["pid"] == program.pid
