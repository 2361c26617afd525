"""labkit.attribution names the Hatchet task attempt a request comes from (X-Lab-Origin's "hatchet").

On a real Hatchet worker every task of a workflow runs in one process, so the pid no longer tells
the attempts apart; hatchet-sdk 1.x sets context variables around each attempt (its Context, the
retry count, the step and workflow run ids), and the hook reads them. No engine is needed to test
it: the variables are set here by hand, as the worker's runner sets them, with a Context the SDK
builds itself (the one mock_run would hand the task)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading

import pytest
from pydantic import BaseModel

from labkit import attribution

hatchet_sdk = pytest.importorskip("hatchet_sdk")



class Doc(BaseModel):
    doc_id: str


def offline_token() -> str:
    import base64
    import json

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"sub": "test-tenant", "server_url": "http://127.0.0.1:9", "grpc_broadcast_address": "127.0.0.1:9"}
    return ".".join([part({"alg": "none", "typ": "JWT"}), part(claims), "unsigned"])


@pytest.fixture
def task(monkeypatch):
    """A task of a workflow, defined with an offline client (nothing is contacted)."""
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", offline_token())
    monkeypatch.setenv("HATCHET_CLIENT_TLS_STRATEGY", "none")

    client = hatchet_sdk.Hatchet()
    flow = client.workflow(name="attribution-flow", input_validator=Doc)

    @flow.task(retries=2)
    def classify(input: Doc, ctx) -> dict:
        return {}

    return classify, Doc


def as_the_worker_runs(task, doc, retry_count: int, step_run_id: str, workflow_run_id: str):
    """Set the SDK's context variables the way its worker runner does around one attempt."""
    from hatchet_sdk.runnables import contextvars as variables

    context = task._create_mock_context(doc(doc_id="d1"), retry_count=retry_count)
    variables.ctx_hatchet_context.set(context)
    variables.ctx_step_run_id.set(step_run_id)
    variables.ctx_workflow_run_id.set(workflow_run_id)
    variables.ctx_task_retry_count.set(retry_count)


def test_outside_a_task_the_origin_has_no_hatchet_entry():
    """Given hatchet_sdk imported, When no task attempt runs in this context,
    Then the origin is the usual one (no "hatchet" key), so other labs' origins are unchanged."""
    import hatchet_sdk.runnables.contextvars  # noqa: F401

    found = contextvars.Context().run(attribution.origin)
    assert "hatchet" not in found
    assert found["pid"] == os.getpid()


def test_a_task_attempt_is_named_with_its_retry_count_and_runs(task):
    """Given the worker's context variables for attempt 3 (retry_count 2) of classify,
    When a request is stamped in that context (and in a thread that copied it, as a sync task runs),
    Then the origin names the task, the workflow, the retry count and both run ids."""
    classify, doc = task

    def stamped() -> dict:
        as_the_worker_runs(classify, doc, 2, "step-run-7", "wf-run-3")
        inside = attribution.origin()
        copied = contextvars.copy_context()
        seen: list[dict] = []
        thread = threading.Thread(target=lambda: seen.append(copied.run(attribution.origin)))
        thread.start()
        thread.join()
        return {"inside": inside, "thread": seen[0]}

    found = contextvars.Context().run(stamped)
    want = {"task": "classify", "workflow": "attribution-flow", "retry_count": 2, "step_run_id": "step-run-7",
            "workflow_run_id": "wf-run-3"}
    assert found["inside"]["hatchet"] == want
    assert found["thread"]["hatchet"] == want


def test_two_attempts_in_one_process_are_told_apart(task):
    """Given two asyncio tasks of one worker process, each running its own attempt,
    When each stamps a request, Then each origin carries its own task attempt (same pid)."""
    classify, doc = task

    async def attempt(retry_count: int, step_run_id: str) -> dict:
        as_the_worker_runs(classify, doc, retry_count, step_run_id, f"wf-{step_run_id}")
        await asyncio.sleep(0)
        return attribution.origin()

    async def both():
        return await asyncio.gather(attempt(0, "a"), attempt(1, "b"))

    first, second = contextvars.Context().run(asyncio.run, both())
    assert first["pid"] == second["pid"]
    assert (first["hatchet"]["retry_count"], first["hatchet"]["step_run_id"]) == (0, "a")
    assert (second["hatchet"]["retry_count"], second["hatchet"]["step_run_id"]) == (1, "b")


def test_the_hook_survives_a_context_it_cannot_read(monkeypatch):
    """Given an SDK whose context variables are not what the hook expects (another version),
    When a request is stamped, Then the origin simply has no "hatchet" entry (the request still goes out)."""

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("changed in another SDK version")

    monkeypatch.setitem(sys.modules, "hatchet_sdk.runnables.contextvars", Broken())
    assert "hatchet" not in attribution.origin()
