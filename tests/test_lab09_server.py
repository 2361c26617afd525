"""`lab check 08/09 --server URL` without a real engine: the verdicts it must give and the pieces it is made of.

No Inngest or Hatchet server runs here (both download binaries or need Docker), so the live path is
untested (the labs' READMEs say so). What is tested:
- when nothing listens at URL, `lab check 08/09 --server URL` ends with one clear verdict
  ("Cannot reach the ... at URL") and leaves no process behind; Lab 09 without HATCHET_CLIENT_TOKEN says so;
- Lab 09's engine probe also tries the gRPC address the token names;
- Lab 09 reads the engine's record (task events, task summaries) with the field names of hatchet-sdk's
  own REST models, rebuilds each attempt from it, and ties each LLM request to its attempt by the
  Hatchet task, retry count and workflow run that labkit.attribution put in X-Lab-Origin.
Each CLI run takes a few seconds (no worker, no engine: the probe fails first)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from selftest import HANG_LIMIT_S, tail_of

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.timeout(HANG_LIMIT_S + 120),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(rest: str, grpc: str) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return ".".join([part({"alg": "none"}), part({"sub": "t", "server_url": rest, "grpc_broadcast_address": grpc}),
                     "unsigned"])


def lab_check(lab_id: str, server: str, home: Path, **env: str | None) -> subprocess.CompletedProcess:
    full = {**os.environ, "LAB_STATE_DIR": str(home)}
    full = {k: v for k, v in {**full, **env}.items() if v is not None}
    try:
        return subprocess.run([sys.executable, "-m", "labkit.cli", "check", lab_id, "--solution", "--server", server],
                              cwd=REPO, env=full, capture_output=True, text=True, timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired as hung:
        output = hung.output.decode(errors="replace") if isinstance(hung.output, bytes) else hung.output or ""
        pytest.fail(f"hung: `lab check {lab_id} --server {server}` still running after {HANG_LIMIT_S:.0f} s:\n"
                    f"{tail_of(output)}", pytrace=False)


def left_behind(home: Path) -> list[str]:
    """Processes still alive that were started for this run (they carry its LAB_STATE_DIR)."""
    mark = f"LAB_STATE_DIR={home}"
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(item == mark for item in (f"{k}={v}" for k, v in process.environ().items())):
                found.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])}")
        except (psutil.Error, OSError):
            continue
    return found


def no_process_left(home: Path) -> None:
    deadline = time.monotonic() + 30  # a wait for the state (all gone), not a budget
    while left_behind(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left_behind(home), f"left behind: {left_behind(home)}"


def test_lab09_server_mode_says_it_cannot_reach_an_engine_that_is_not_there(tmp_path):
    """Given a token that names 127.0.0.1:<a port nobody listens on>, When `lab check 09 --server URL`
    runs, Then the owner check fails with "Cannot reach the Hatchet engine at URL", the others are
    not checked, there is no traceback, and no process is left."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = lab_check("09", url, tmp_path, HATCHET_CLIENT_TOKEN=token(url, f"127.0.0.1:{port}"))
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert f"Cannot reach the Hatchet engine at {url}" in text, text
    assert "Connection refused" in text and "untested in the course" in text, text
    assert "NOT CHECKED" in text and "Traceback" not in text, text
    no_process_left(tmp_path)


def test_lab09_server_mode_without_a_token_says_so(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    out = lab_check("09", url, tmp_path, HATCHET_CLIENT_TOKEN=None)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "HATCHET_CLIENT_TOKEN is not set" in text, text
    no_process_left(tmp_path)


def test_lab08_server_mode_says_it_cannot_reach_a_server_that_is_not_there(tmp_path):
    """Given nothing listening at URL, When `lab check 08 --server URL` runs, Then runs-to-completion
    fails with "Cannot reach the Inngest server at URL" before any app starts, and no process is left."""
    url = f"http://127.0.0.1:{free_port()}"
    out = lab_check("08", url, tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert f"Cannot reach the Inngest server at {url}" in text, text
    assert "Connection refused" in text and "Traceback" not in text, text
    no_process_left(tmp_path)


# --- the pieces of Lab 09's server path, without an engine --------------------------------------

@pytest.fixture(scope="module")
def check():
    path = REPO / "checks" / "test_lab09_hatchet_pipeline.py"
    spec = importlib.util.spec_from_file_location("lab09_check_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    if str(path.parent) not in sys.path:  # it imports its scenario module (checks/), as under pytest
        sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server_check():
    """The check module as `lab check 09 --server URL` loads it (LAB_SERVER_URL set while it imports)."""
    path = REPO / "checks" / "test_lab09_hatchet_pipeline.py"
    spec = importlib.util.spec_from_file_location("lab09_check_server_mode", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    saved = os.environ.get("LAB_SERVER_URL")
    os.environ["LAB_SERVER_URL"] = "http://127.0.0.1:8889"
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            os.environ.pop("LAB_SERVER_URL", None)
        else:
            os.environ["LAB_SERVER_URL"] = saved
    return module


def test_the_probe_tries_the_grpc_address_the_token_names(check):
    """Given the REST API listening and the token's gRPC address not, Then the verdict names the gRPC endpoint."""
    with socket.socket() as rest:
        rest.bind(("127.0.0.1", 0))
        rest.listen()
        url = f"http://127.0.0.1:{rest.getsockname()[1]}"
        grpc = f"127.0.0.1:{free_port()}"
        verdict = check.unreachable_engine(url, {"HATCHET_CLIENT_TOKEN": token(url, grpc)})
        assert verdict is not None and grpc in verdict.summary and "gRPC" in verdict.summary
        # HATCHET_CLIENT_HOST_PORT wins over the token, as in the SDK
        assert check.unreachable_engine(url, {"HATCHET_CLIENT_TOKEN": token(url, grpc),
                                              "HATCHET_CLIENT_HOST_PORT": url.removeprefix("http://")}) is None


def test_the_worker_and_driver_get_a_namespace_of_their_own(check, monkeypatch):
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", "ey.user")
    env = check.server_env({"OPENAI_API_KEY": "k"}, "http://127.0.0.1:8888", "abc123")
    assert env["HATCHET_CLIENT_TOKEN"] == "ey.user" and env["HATCHET_CLIENT_SERVER_URL"] == "http://127.0.0.1:8888"
    assert env["HATCHET_CLIENT_NAMESPACE"] == "lab09checkabc123" and env["LAB09_WORKER_NAME"].endswith("abc123")


def engine_record(run_id: str) -> dict:
    """What server_run.py writes for one document: run details as hatchet-sdk's REST models dump them."""
    def event(n, task, kind, retry, **extra):
        return {"id": n, "task_id": f"t-{task}", "timestamp": f"2026-12-03T07:00:{n:02d}Z", "event_type": kind,
                "message": "", "task_display_name": task, "retry_count": retry, **extra}

    return {"workflow_run_id": run_id, "ok": True, "details": {
        "tasks": [{"display_name": "extract", "output": {"doc_id": "d", "facts": "F", "words": 1}, "status": "COMPLETED"},
                  {"display_name": "embed", "output": {"doc_id": "d", "vector": [1.0]}, "status": "COMPLETED"},
                  {"display_name": "classify", "output": {"doc_id": "d", "label": "memo"}, "status": "COMPLETED"},
                  {"display_name": "store", "output": {"doc_id": "d", "row_id": 1, "created": False},
                   "status": "COMPLETED"}],
        "task_events": [
            event(1, "extract", "STARTED", 0), event(2, "extract", "FINISHED", 0),
            event(3, "embed", "FINISHED", 0),
            event(4, "classify", "FAILED", 0, error_message="RateLimitError: Error code: 429"),
            event(5, "classify", "FAILED", 1, error_message="RateLimitError: Error code: 429"),
            event(6, "classify", "FINISHED", 2),
            event(7, "store", "FINISHED", 0, output=json.dumps({"doc_id": "d", "row_id": 1, "created": True})),
            event(8, "store", "FINISHED", 0)]}}


def test_the_engine_record_is_read_with_the_sdks_own_field_names(check, engine_record_fields):
    """Given the keys server_run.py's dump has (the SDK's REST models, model_dump), Then every key the check
    reads exists in those models: a renamed field in another SDK version fails here, not on a user's engine."""
    events, summaries = engine_record_fields
    record = engine_record("run-1")["details"]
    assert set(record["task_events"][0]) <= events
    assert set(record["tasks"][0]) <= summaries


@pytest.fixture(scope="module")
def engine_record_fields():
    from hatchet_sdk.clients.rest.models.v1_task_event import V1TaskEvent
    from hatchet_sdk.clients.rest.models.v1_task_summary import V1TaskSummary
    from hatchet_sdk.clients.rest.models.v1_workflow_run_details import V1WorkflowRunDetails

    assert {"task_events", "tasks"} <= set(V1WorkflowRunDetails.model_fields)
    return set(V1TaskEvent.model_fields), set(V1TaskSummary.model_fields)


def test_attempts_are_rebuilt_from_the_task_events_and_the_ledger_tied_to_them(check):
    """Given one run's events (classify failed twice on a 429, then finished; store finished, then
    finished again after the replay), Then the check sees 1+1+3+1 attempts in order with their outputs,
    the second store as the replay, and each LLM request tied to the attempt its origin names."""
    doc = check.Doc(role="retried", doc_id="d", provider="openai", title="T", body="B", facts="F", label="memo")
    keys: dict = {}
    run = check.attempts_from_engine(doc, engine_record("run-1"), list(check.TASKS), keys)
    assert [(a.task, a.retry_count, a.ok) for a in run.attempts] == [
        ("extract", 0, True), ("embed", 0, True), ("classify", 0, False), ("classify", 1, False),
        ("classify", 2, True), ("store", 0, True)]
    assert run.finished and run.outputs["classify"] == {"doc_id": "d", "label": "memo"}
    assert run.outputs["store"]["created"] is True  # the event's own output, not the summary's (the replay's)
    assert run.replayed_store is not None and run.replayed_store.ok and "replayed" in run.replayed_store.note
    assert all(a.status_code == 429 for a in run.of("classify")[:2])

    def entry(task, retry, run_id="run-1"):
        return SimpleNamespace(origin={"pid": 4242, "hatchet": {"task": task, "retry_count": retry,
                                                                "workflow_run_id": run_id}})

    ledger = [entry("classify", 1), entry("document-pipeline:extract", 0), entry("classify", 1, "other-run"),
              SimpleNamespace(origin={"pid": 4242})]
    check.tie_ledger_to_attempts(ledger, keys)
    scenario = check.Scenario(runs={"retried": run})
    senders = [check.sender(scenario, e) for e in ledger]
    assert (senders[0].task, senders[0].retry_count) == ("classify", 1)
    assert (senders[1].task, senders[1].retry_count) == ("extract", 0)
    assert senders[2] is None and senders[3] is None  # another run's attempt; no task attempt at all


def test_a_run_that_ran_out_of_retries_fails_at_that_task(check):
    doc = check.Doc(role="exhausted", doc_id="d", provider="openai", title="T", body="B", facts="F", label="memo")
    record = engine_record("run-2")
    events = [e for e in record["details"]["task_events"]
              if e["task_display_name"] in ("extract", "embed") or e["event_type"] == "FAILED"]
    record["details"]["task_events"] = events
    run = check.attempts_from_engine(doc, record, list(check.TASKS), {})
    assert run.failed_task == "classify" and not run.finished and not run.of("store")


def test_failures_marked_only_as_retrying_still_count_as_failed_attempts(check):
    """Given an engine whose events mark a retried failure RETRYING (no FAILED event), Then those are the
    failed attempts (the exact event an engine emits is not known here: no engine offline)."""
    doc = check.Doc(role="retried", doc_id="d", provider="openai", title="T", body="B", facts="F", label="memo")
    record = engine_record("run-3")
    for event in record["details"]["task_events"]:
        if event["event_type"] == "FAILED":
            event["event_type"] = "RETRYING"
    run = check.attempts_from_engine(doc, record, list(check.TASKS), {})
    assert [(a.retry_count, a.ok) for a in run.of("classify")] == [(0, False), (1, False), (2, True)]


# --- the whole server-mode evidence, as an engine running the reference solution would leave it ----------

TASKS_DECLARED = {"extract": {"readable_id": "extract", "retries": 3},
                  "embed": {"readable_id": "embed", "parents": ["extract"]},
                  "classify": {"readable_id": "classify", "parents": ["extract", "embed"], "retries": 3},
                  "store": {"readable_id": "store", "parents": ["extract", "embed", "classify"], "retries": 3}}


def engine_evidence(check, redo_extract_in_classify: bool = False):
    """A Scenario built the way run_on_server builds it, from engine records and a ledger shaped as a correct
    workflow on a real engine would leave them (every attempt in one worker pid, told apart by the Hatchet
    origin). With redo_extract_in_classify, classify's attempts also send extract's prompt (a known mistake)."""
    import random

    models = check.course_models()
    docs = check.make_docs(random.Random(5), models.LABELS, 3)
    scenario = check.Scenario(tasks=TASKS_DECLARED, order=list(check.TASKS), dims=models.EMBED_DIMS)
    scenario.embed_text = lambda text: models.embed_text(text, scenario.dims)
    ledger, rows, keys = [], [], {}
    clock = iter(range(10_000))

    def request(run_id, task, retry, messages, status):
        ledger.append(SimpleNamespace(prompt="\n".join(m["content"] for m in messages), status=status,
                                      ok=status == 200, origin={"pid": 4242, "hatchet": {
                                          "task": task, "retry_count": retry, "workflow_run_id": run_id}}))

    for doc in docs:
        run_id = f"run-{doc.role}"
        events = []

        def event(task, kind, retry, **extra):
            events.append({"id": next(clock), "timestamp": None, "event_type": kind, "task_display_name": task,
                           "retry_count": retry, "message": "", **extra})

        document = models.Document(**doc.input())
        for retry in range(doc.extract_429 + 1):
            failing = retry < doc.extract_429
            request(run_id, "extract", retry, models.extract_messages(document), 429 if failing else 200)
            event("extract", "FAILED" if failing else "FINISHED", retry, error_message="RateLimitError: 429"
                  if failing else None, output=None if failing else json.dumps(
                      {"doc_id": doc.doc_id, "facts": doc.facts, "words": 2}))
        vector = scenario.embed_text(doc.facts)
        event("embed", "FINISHED", 0, output=json.dumps({"doc_id": doc.doc_id, "vector": vector}))
        tries = 4 if doc.classify_429 > 3 else doc.classify_429 + 1  # retries=3: 4 attempts at most
        for retry in range(tries):
            failing = retry < doc.classify_429
            if redo_extract_in_classify:
                request(run_id, "classify", retry, models.extract_messages(document), 200)
            request(run_id, "classify", retry, models.classify_messages(doc.doc_id, doc.facts, vector),
                    429 if failing else 200)
            event("classify", "FAILED" if failing else "FINISHED", retry,
                  error_message="RateLimitError: Error code: 429" if failing else None,
                  output=None if failing else json.dumps({"doc_id": doc.doc_id, "label": doc.label}))
        if doc.classify_429 <= 3:
            stored = {"doc_id": doc.doc_id, "row_id": len(rows) + 1, "created": True}
            event("store", "FINISHED", 0, output=json.dumps(stored))
            if doc.role == "plain":  # the replay
                event("store", "FINISHED", 0, output=json.dumps({**stored, "created": False}))
            rows.append((len(rows) + 1, doc.doc_id, doc.provider, doc.title, doc.facts, doc.label, json.dumps(vector)))
        record = {"workflow_run_id": run_id, "details": {"tasks": [], "task_events": events}}
        scenario.runs[doc.role] = check.attempts_from_engine(doc, record, scenario.order, keys)
    check.tie_ledger_to_attempts(ledger, keys)
    scenario.ledger, scenario.rows, scenario.attempt_keys = ledger, rows, keys
    return scenario


CHECKS = ("test_the_workflow_declares_the_four_tasks_as_a_dag", "test_each_task_is_built_from_its_parents_outputs",
          "test_a_429_fails_the_attempt_and_hatchet_retries_the_task",
          "test_a_retried_task_does_not_redo_its_parents_llm_calls", "test_a_429_that_outlasts_the_retries_fails_the_run",
          "test_store_run_twice_leaves_one_row_per_document")


def test_server_shaped_evidence_of_a_correct_workflow_passes_the_same_checks(server_check):
    """Given the evidence an engine would leave for the reference solution (attempts from task events, the ledger
    tied by the Hatchet origin, the rows), When the check's own functions judge it, Then every one passes."""
    scenario = engine_evidence(server_check)
    for name in CHECKS:
        evidence: dict = {}
        getattr(server_check, name)(scenario, evidence)
        assert evidence["engine"] == "Hatchet engine at http://127.0.0.1:8889", (name, evidence)


def test_server_shaped_evidence_names_a_task_that_redoes_its_parents_call(server_check):
    """Given classify's attempts also sending extract's prompt (same worker pid: only the Hatchet origin tells
    them apart), Then earlier-calls-once fails naming classify as the sender of extract's prompt."""
    scenario = engine_evidence(server_check, redo_extract_in_classify=True)
    with pytest.raises(server_check.CheckFailed) as failure:
        server_check.test_a_retried_task_does_not_redo_its_parents_llm_calls(scenario, {})
    assert "sent extract's prompt" in failure.value.summary and "classify of" in failure.value.summary
    assert "Hatchet engine" in failure.value.details
