"""Lab 09 autograder: the document pipeline as a Hatchet 1.x workflow, graded on the SDK's mock_run.

There is no Hatchet server here (its engine is a binary downloaded at install), so this check runs
each task with hatchet-sdk's own `Task.mock_run` / `aio_mock_run`, and plays the engine itself:
  1. `python -m <lab>.describe` prints what a worker would register (`Workflow.to_proto()`): the
     tasks, their parents and retries, the concurrency expressions;
  2. for every document, the tasks run in their parents' order, each attempt a process of its own
     (`python -m <lab>.run_task`, forked from an interpreter that has imported hatchet_sdk, under
     labkit.attribution), handed the outputs its declared parents returned, as mock_run's
     `parent_outputs`; a task that raised runs again, alone, with retry_count + 1, until its
     declared `retries` are spent, and then the document's run has failed.
The course LLM answers per document with replies drawn for this run, and answers 429 where the
scenario wants a busy provider:
  retried    classify answers 429 as many times as classify may retry, then a label
  plain      no fault; its store runs a second time, as after a worker died before reporting it
  twin       the same title and text as `plain` under another id; extract answers one 429 first
  exhausted  classify answers 429 every time: the run must fail, and nothing may be stored
Evidence from outside the student's code: the LLM ledger (each request carries the pid of the
attempt that sent it), the outputs each attempt wrote, and the SQLite file read with sqlite3.
What mock_run cannot show: a scheduler. Backoff waits, queueing under a concurrency limit and
durable progress across a worker crash exist only on a real server; the concurrency limit is read
from the registration, not watched.

`lab check 09 --server URL` (LAB_SERVER_URL, with the user's HATCHET_CLIENT_TOKEN) runs the same
documents on a real Hatchet engine instead (UNTESTED in the course: no engine runs offline): the
check starts the student's worker (worker.py) and the course's driver (server_run.py) in a
namespace of their own, the engine orders, retries and replays the tasks, and every attempt is
read from the engine's task events; each LLM request is tied to its attempt by the Hatchet task,
retry count and workflow run that labkit.attribution reads from the SDK on the worker
(docs/decisions/hatchet-server-mode.md). The same checks then judge the same evidence.
"""

from __future__ import annotations

import ast
import json
import math
import os
import random
import re
import base64
import socket
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from urllib.parse import urlsplit

from labkit import course, prefork, proc
from labkit.feedback import CheckFailed, NotChecked, parse_error, student_error, tail, unfinished
from labkit.services import CourseLLM
from scenario_lab09_hatchet_pipeline import PRELOAD, TAG  # shared with `lab sweep 09`

LAB = "09"
TASKS = ("extract", "embed", "classify", "store")
LLM_TASKS = ("extract", "classify")
# What a task must (at least) wait for: the data it is built from.
REQUIRED_PARENTS = {"extract": set(), "embed": {"extract"}, "classify": {"embed"}, "store": {"classify"}}
QUEUEING = ("GROUP_ROUND_ROBIN", "QUEUE_NEWEST")  # QUEUE_OLDEST: in the 1.43 enum, refused by its protobuf
MAX_RETRIES_USED = 5  # the retried document's 429s: min(declared retries, this)
IDLE_LIMIT_S = 20.0  # a task attempt all but idle this long is stuck (proc.Watchdog)
CPU_LIMIT_S = 60.0  # ... or one that used this much CPU (an attempt needs well under a second)
MOCK_NOTE = ("Lab 09 runs on hatchet-sdk's in-process mock (Task.mock_run), not on a Hatchet server: this check "
             "plays the engine (parents' order, retries) and has no scheduler.")
SERVER_ENV = "LAB_SERVER_URL"  # set by `lab check 09 --server URL` (labkit.cli.SERVER_ENV)
SERVER = os.environ.get(SERVER_ENV, "").rstrip("/")
ENGINE = f"Hatchet engine at {SERVER}" if SERVER else "mock_run"
if SERVER:
    MOCK_NOTE = (f"This run used the Hatchet engine at {SERVER} (lab check --server, a mode untested in the "
                 f"course), not mock_run: the engine ordered, retried and replayed the tasks.")
PROBE_TIMEOUT_S = 5.0  # one TCP connect to the engine's addresses; refused at once when nothing listens
SERVER_RUN_HANG_S = 900.0  # the grader's last guard: the engine's own timeouts end a stuck task long before

PROVIDERS = ("openai", "anthropic", "mistral", "cohere", "groq", "together")
SUBJECTS = ("chairs", "printer toner", "a lease", "a refund", "server racks", "coffee beans", "office rent",
            "a late parcel", "the audit", "solar panels")
FACT_WORDS = ("amount", "due", "signed", "delivered", "refund", "quarterly", "penalty", "supplier", "tenant",
              "overdue", "warranty", "invoice", "damaged", "renewal", "approved", "pending")

REVISIT_PARENTS = ("§64.2.5, corrected for hatchet-sdk 1.x: a task declares the tasks it needs with "
                   "@pipeline.task(parents=[...]) and reads each one's output with ctx.task_output(parent). "
                   "Hatchet hands a task only its parents' outputs: build embed from extract's facts, classify "
                   "from extract's facts and embed's vector, store from all three, never from the raw input "
                   "again or from a call of your own.")
REVISIT_RETRIES = ("Hatchet retries a task that raises, alone, up to the task's `retries` (its parents' outputs are "
                   "already recorded). Let the 429 raise: create the client with AsyncOpenAI(max_retries=0), so the "
                   "openai client does not retry quietly inside one attempt, do not catch the error, and declare "
                   "retries=... on every task that calls the LLM.")
REVISIT_IDEMPOTENT = ("A task runs at least once: a worker that dies after the commit and before it reports the "
                      "result runs store again. Make the write idempotent by the document id: look the row up by "
                      "doc_id (the column is unique) and update it, or insert it when it is not there.")
REVISIT_CONCURRENCY = ("Hatchet enforces concurrency on the server: a ConcurrencyExpression(expression=..., max_runs=..., "
                       "limit_strategy=...) on the workflow (or on each task that calls the LLM) groups runs by the "
                       "expression's value, evaluated on the input, and lets max_runs of a group run at once. Group "
                       "by provider (input.provider), take max_runs from MAX_RUNS_PER_PROVIDER (the environment "
                       "decides it), and queue the rest (GROUP_ROUND_ROBIN): a CANCEL_* strategy drops documents.")


def failed(summary: str, observed: str = "", expected: str = "", revisit: str = "", details: str = "") -> CheckFailed:
    """Every verdict says where it was made: on the SDK's mock, not on a server."""
    return CheckFailed(summary, observed=observed, expected=expected, revisit=revisit,
                       details="\n".join(filter(None, [details, MOCK_NOTE])))


# --- what the check computes itself --------------------------------------------------------------

def course_models():
    """The course's models.py (a course file: its embedding function is the reference)."""
    import importlib.util

    path = course.load().lab(LAB).solution_dir / "models.py"
    spec = importlib.util.spec_from_file_location("lab09_course_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same_vector(a, b) -> bool:
    return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and all(isinstance(x, (int, float)) and math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b)))


class Unsupported(ValueError):
    pass


def cel_value(expression: str, data: dict):
    """Evaluate the small part of CEL a grouping key needs: input.field, input["field"], string
    literals, `+` and string(x). Anything else is Unsupported (the check says so, it does not guess)."""
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError as err:
        raise Unsupported(f"not an expression the check can read ({err.msg})") from None

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
            return node.value
        if isinstance(node, ast.Name) and node.id == "input":
            return data
        if isinstance(node, ast.Attribute):
            base = value(node.value)
            if isinstance(base, dict) and node.attr in base:
                return base[node.attr]
            raise Unsupported(f"the input has no field {node.attr!r}")
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            base = value(node.value)
            if isinstance(base, dict) and node.slice.value in base:
                return base[node.slice.value]
            raise Unsupported(f"the input has no field {node.slice.value!r}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = value(node.left), value(node.right)
            if isinstance(left, str) and isinstance(right, str):
                return left + right
            raise Unsupported("+ of values that are not both strings")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "string" \
                and len(node.args) == 1:
            return str(value(node.args[0]))
        raise Unsupported(f"`{ast.unparse(node)}` is more CEL than this check evaluates")

    return value(tree)


# --- the scenario --------------------------------------------------------------------------------

@dataclass
class Doc:
    role: str
    doc_id: str
    provider: str
    title: str
    body: str
    facts: str  # what the course LLM answers extract
    label: str  # what it answers classify
    extract_429: int = 0
    classify_429: int = 0

    def input(self) -> dict:
        return {"doc_id": self.doc_id, "provider": self.provider, "title": self.title, "body": self.body}


@dataclass
class Attempt:
    doc: str
    task: str
    retry_count: int
    pid: int
    exit_code: int | None
    ok: bool
    output: object = None
    error: str | None = None
    status_code: int | None = None
    parents: dict = field(default_factory=dict)
    log: str = ""
    stuck: str | None = None

    doc_id: str = ""
    where: str = ""  # on a server: the workflow run (every attempt shares the worker's pid)

    @property
    def note(self) -> str:
        return f"{self.task} of {self.doc_id} (retry_count {self.retry_count}, {self.where or f'pid {self.pid}'})"


@dataclass
class Run:
    """One document through the DAG."""

    doc: Doc
    outputs: dict = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    failed_task: str | None = None
    replayed_store: Attempt | None = None

    def of(self, task: str) -> list[Attempt]:
        return [a for a in self.attempts if a.task == task]

    @property
    def finished(self) -> bool:
        return self.failed_task is None and all(t in self.outputs for t in TASKS)


@dataclass
class Scenario:
    registration: dict | None = None
    tasks: dict = field(default_factory=dict)  # name -> registered task (dict)
    order: list[str] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)  # role -> run
    ledger: list = field(default_factory=list)
    rows: list[tuple] | None = None
    rows_error: str | None = None
    max_runs: int = 0
    other_max_runs: int = 0
    other_registration: dict | None = None
    dims: int = 0
    embed_text: object = None
    attempt_keys: dict | None = None  # on a server: (workflow run, task, retry_count) -> the attempt's key
    failure: CheckFailed | None = None
    dag_failure: CheckFailed | None = None
    seconds: float = 0.0

    def require(self, owner: bool = False) -> Scenario:
        """The owner (dag-declared) reports why the scenario could not run; the others say they could not check."""
        if self.failure is not None:
            if MOCK_NOTE not in self.failure.details:
                self.failure.details = "\n".join(filter(None, [self.failure.details, MOCK_NOTE]))
            if owner or self.failure.summary.startswith("Not implemented yet"):
                raise self.failure
            raise NotChecked(f"not checked: the scenario could not run ({self.failure.summary})")
        return self

    def require_dag(self) -> Scenario:
        self.require()
        if self.dag_failure is not None:
            raise NotChecked(f"not checked: the workflow's tasks are not the lab's DAG ({self.dag_failure.summary})")
        return self

    def retries(self, task: str) -> int:
        return int(self.tasks.get(task, {}).get("retries", 0))

    def attempt_of_pid(self, pid) -> Attempt | None:
        for run in self.runs.values():
            for attempt in run.attempts + ([run.replayed_store] if run.replayed_store else []):
                if attempt.pid == pid:
                    return attempt
        return None


def make_docs(rng: random.Random, labels: tuple[str, ...], classify_retries: int) -> list[Doc]:
    def sentence(k: int) -> str:
        return " ".join(rng.sample(FACT_WORDS, k)) + f" {rng.randint(10, 9999)}"

    providers = rng.sample(PROVIDERS, 2)
    docs = []
    for role in ("retried", "plain", "exhausted"):
        subject = rng.choice(SUBJECTS)
        docs.append(Doc(role=role, doc_id=f"doc-{uuid.uuid4().hex[:10]}", provider=rng.choice(providers),
                        title=f"{subject.title()} {rng.randint(100, 999)}",
                        body=f"About {subject}: {sentence(5)}. Reference {uuid.uuid4().hex[:6]}.",
                        facts=f"Facts: {sentence(6)}.", label=rng.choice(labels)))
    docs[0].classify_429 = min(classify_retries, MAX_RETRIES_USED)
    docs[2].classify_429 = 10_000
    plain = docs[1]
    docs.insert(2, Doc(role="twin", doc_id=f"doc-{uuid.uuid4().hex[:10]}", provider=plain.provider,
                       title=plain.title, body=plain.body, facts=plain.facts, label=plain.label, extract_429=1))
    return docs


def rules_for(docs: list[Doc]) -> list[dict]:
    rules = []
    for doc in docs:
        rules.append({"name": f"lab09-extract-{doc.doc_id}", "match": re.escape(f"[lab09 task=extract doc={doc.doc_id}]"),
                      "reply": doc.facts, "fail_first": doc.extract_429, "fail_status": 429})
        rules.append({"name": f"lab09-classify-{doc.doc_id}", "match": re.escape(f"[lab09 task=classify doc={doc.doc_id}]"),
                      "reply": doc.label, "fail_first": doc.classify_429, "fail_status": 429})
    return rules


class Engine:
    """The part of a Hatchet engine mock_run lacks: order, parents' outputs, retries. One process per attempt."""

    def __init__(self, target, workdir: Path, env: dict, forks: prefork.ForkServer | None):
        self.target, self.workdir, self.env, self.forks = target, workdir, env, forks
        self.count = 0

    def start(self, module: str, args: list[str], name: str):
        self.count += 1
        name = f"{self.count:03d}-{name}"
        log_path = self.workdir / f"{name}.log"
        if self.forks is not None:
            return self.forks.start(self.target.module(module), args, name=name, log_path=log_path, env=self.env,
                                    cwd=self.workdir), log_path
        argv = [sys.executable, "-m", self.target.module(module), *args]
        return proc.start(argv, name=name, log_path=log_path, env=self.env, cwd=self.workdir, student=True), log_path

    def finish(self, process) -> str | None:
        """Wait until the process ends or is judged stuck (by its progress, not by the clock)."""
        watchdog = proc.Watchdog(process.pid, idle_limit_s=IDLE_LIMIT_S, cpu_limit_s=CPU_LIMIT_S)
        while process.alive:
            if watchdog.stuck():
                process.kill()
                process.stop()
                return watchdog.verdict
            time.sleep(0.01)
        process.stop()
        return None

    def describe(self) -> tuple[dict | None, str]:
        process, log_path = self.start("describe", [], "describe")
        stuck = self.finish(process)
        log = process.output()
        if stuck:
            return None, f"describe {stuck}\n{log}"
        match = re.search(r"^\{.*^\}", log, re.S | re.M)
        if process.returncode != 0 or not match:
            return None, log
        try:
            return json.loads(match.group(0)), log
        except ValueError:
            return None, log

    def attempt(self, doc: Doc, task: str, parents: dict, retry_count: int) -> Attempt:
        name = f"{task}-{doc.role}-{retry_count}-{uuid.uuid4().hex[:4]}"
        (self.workdir / f"{name}.input.json").write_text(json.dumps(doc.input()))
        (self.workdir / f"{name}.parents.json").write_text(json.dumps(parents))
        out = self.workdir / f"{name}.out.json"
        process, _ = self.start("run_task", [task, f"{name}.input.json", f"{name}.parents.json", str(retry_count),
                                             out.name], name)
        stuck = self.finish(process)
        attempt = Attempt(doc=doc.role, doc_id=doc.doc_id, task=task, retry_count=retry_count, pid=process.pid,
                          exit_code=process.returncode, ok=False, parents=parents, log=process.output(), stuck=stuck)
        try:
            result = json.loads(out.read_text())
        except (OSError, ValueError):
            attempt.error = stuck or student_error(attempt.log) or f"the attempt exited with status {attempt.exit_code}"
            return attempt
        attempt.ok = bool(result.get("ok"))
        attempt.output, attempt.error, attempt.status_code = result.get("output"), result.get("error"), result.get("status_code")
        return attempt

    def run(self, doc: Doc, scenario: Scenario) -> Run:
        run = Run(doc)
        for task in scenario.order:
            parents = {p: run.outputs[p] for p in scenario.tasks[task].get("parents", [])}
            for retry_count in range(scenario.retries(task) + 1):
                attempt = self.attempt(doc, task, parents, retry_count)
                run.attempts.append(attempt)
                todo = unfinished(attempt.error or "", LAB) or unfinished(attempt.log, LAB)
                if todo:
                    raise todo
                if attempt.stuck:  # nothing after it can be judged: stop here, with the reason
                    raise failed(f"{attempt.note} never finished: it {attempt.stuck}",
                                 observed="the attempt's process was stopped (it made no progress)",
                                 expected="a task attempt that returns or raises",
                                 revisit="Something in the task waits for what never comes: an input(), a lock, "
                                         "an event nobody sets, a server that never answers.",
                                 details=tail(attempt.log, 8))
                if attempt.ok:
                    run.outputs[task] = attempt.output
                    break
            else:
                run.failed_task = task
                return run
        return run


def dag_failure(tasks: dict) -> CheckFailed | None:
    names = list(tasks)
    if sorted(names) != sorted(TASKS):
        return failed(f"The workflow's tasks are {names}, not the lab's four",
                      observed=f"registered tasks: {names}",
                      expected=f"exactly the tasks {list(TASKS)} (the course's runner finds them by name)",
                      revisit="Decorate extract, embed, classify and store with @pipeline.task(...) on the workflow "
                              "made by hatchet.workflow(name=...) (the 0.x @hatchet.workflow class and @hatchet.step "
                              "methods are gone in hatchet-sdk 1.x).")
    missing = {t: sorted(REQUIRED_PARENTS[t] - set(tasks[t].get("parents", []))) for t in TASKS}
    missing = {t: m for t, m in missing.items() if m}
    if missing:
        said = "; ".join(f"{t} declares parents {tasks[t].get('parents', [])}, without {', '.join(m)}"
                         for t, m in missing.items())
        return failed(f"The tasks do not wait for the data they are built from: {said}",
                      observed="; ".join(f"{t}: parents={tasks[t].get('parents', [])}" for t in TASKS),
                      expected="embed after extract, classify after embed, store after classify "
                               "(extract -> embed -> classify -> store), each with parents=[...]",
                      revisit=REVISIT_PARENTS)
    return None


def topological(tasks: dict) -> list[str]:
    order: list[str] = []
    while len(order) < len(tasks):
        ready = [t for t in tasks if t not in order and all(p in order for p in tasks[t].get("parents", []))]
        if not ready:
            raise failed("The tasks' parents form a cycle", observed=str({t: v.get("parents") for t, v in tasks.items()}),
                         expected="a DAG", revisit=REVISIT_PARENTS)
        order += ready
    return order


def read_rows(url_path: Path) -> tuple[list[tuple] | None, str | None]:
    if not url_path.exists():
        return None, f"no database file at {url_path.name}"
    try:
        connection = sqlite3.connect(f"{url_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT id, doc_id, provider, title, facts, label, vector "
                                      "FROM processed_documents ORDER BY id").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as err:
        return None, f"{type(err).__name__}: {err}"
    return rows, None


# --- `lab check 09 --server URL`: the same documents on a real Hatchet engine ----------------------
# UNTESTED in this course: no Hatchet engine runs offline (hatchet-lite is a Docker image, the embedded
# engine downloads a binary). Written from hatchet-sdk 1.43: its worker, its runs API (details with the
# task events, replay) and the context variables labkit.attribution reads on the worker.

def token_claims(token: str) -> dict:
    """The claims of the user's HATCHET_CLIENT_TOKEN (the SDK reads the engine's addresses from them)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def engine_addresses(server: str, environ: dict) -> list[tuple[str, str, int]]:
    """(what, host, port) of the engine's REST API (the --server URL) and of its gRPC endpoint (from
    HATCHET_CLIENT_HOST_PORT, else from the token, as the SDK finds it)."""
    url = urlsplit(server)
    found = [("the engine's API", url.hostname or "", url.port or (443 if url.scheme == "https" else 80))]
    grpc = environ.get("HATCHET_CLIENT_HOST_PORT") or token_claims(environ.get("HATCHET_CLIENT_TOKEN", "")).get(
        "grpc_broadcast_address", "")
    host, _, port = grpc.rpartition(":")
    if host and port.isdigit():
        found.append(("its gRPC endpoint", host.strip("[]"), int(port)))
    return found


def unreachable_engine(server: str, environ: dict) -> CheckFailed | None:
    """A verdict when the engine cannot be used at all (no token, nothing listening), else None."""
    revisit = ("Nothing in your workflow: `lab check 09 --server URL` needs a Hatchet engine you run (the README's "
               "\"A real server\": hatchet-lite) and its token in HATCHET_CLIENT_TOKEN. Without one, run "
               "`lab check 09` (mock_run).")
    if not environ.get("HATCHET_CLIENT_TOKEN"):
        return failed(f"Cannot use the Hatchet engine at {server}: HATCHET_CLIENT_TOKEN is not set",
                      observed="no HATCHET_CLIENT_TOKEN in the environment of `lab check`",
                      expected="the API token the engine gave you (hatchet-lite: `hatchet-admin token create`)",
                      revisit=revisit)
    for what, host, port in engine_addresses(server, environ):
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
        except OSError as err:
            return failed(f"Cannot reach the Hatchet engine at {server}: nothing answers at {host}:{port} "
                          f"({what})",
                          observed=f"a TCP connection to {host}:{port} failed: {type(err).__name__}: {err}",
                          expected=f"a Hatchet engine listening there (the REST API at {server}, gRPC at the "
                                   f"token's grpc_broadcast_address or HATCHET_CLIENT_HOST_PORT)",
                          revisit=revisit)
    return None


def server_env(env: dict, server: str, key: str) -> dict:
    """The worker's and the driver's environment: the user's Hatchet settings, a namespace of the check's
    own (its workflow and worker cannot meet the user's), the engine's API at the --server URL."""
    found = dict(env)
    found.update({k: v for k, v in os.environ.items() if k.startswith("HATCHET_CLIENT_")})
    found.update(HATCHET_CLIENT_SERVER_URL=server, HATCHET_CLIENT_NAMESPACE=f"lab09check{key}",
                 LAB09_WORKER_NAME=f"lab09-check-{key}", LAB09_WORKER_SLOTS="8")
    return found


def named(display_name, task: str) -> bool:
    return (display_name or "").split(":")[-1] == task


def status_of(value) -> str:
    return str(value or "").split(".")[-1].upper()


def attempts_from_engine(doc: Doc, record: dict, order: list[str], keys: dict) -> Run:
    """The document's run as the engine recorded it: one Attempt per FAILED or FINISHED task event, in
    order; the store attempt after the first that finished is the replay. Each attempt gets a key of its
    own in place of a pid (keys: (workflow run, task, retry_count) -> key)."""
    run = Run(doc)
    details = record.get("details") or {}
    run_id = record.get("workflow_run_id", "")
    summaries = {t: s for t in order for s in details.get("tasks", []) if named(s.get("display_name"), t)}
    events = sorted(details.get("task_events", []), key=lambda e: (e.get("timestamp") or "", e.get("id") or 0))
    for task in order:
        mine = [e for e in events if named(e.get("task_display_name"), task)]
        # An attempt ends FINISHED or FAILED; if this engine marks a failure that will be retried only as
        # RETRYING (not certain: untested on an engine), those count as the failed attempts.
        ending = ("FAILED", "FINISHED") if any(status_of(e.get("event_type")) == "FAILED" for e in mine) \
            else ("RETRYING", "FINISHED")
        seen = [e for e in mine if status_of(e.get("event_type")) in ending]
        for index, event in enumerate(seen):
            retry_count = event.get("retry_count")
            retry_count = index if retry_count is None else retry_count
            replay = task == "store" and any(a.ok for a in run.of("store"))
            key = len(keys) + 1  # a replay is keyed apart: it may carry the retry_count of the first run
            keys[(run_id, task, retry_count, "replay") if replay else (run_id, task, retry_count)] = key
            ok = status_of(event.get("event_type")) == "FINISHED"
            output = None
            if ok:
                output = (summaries.get(task) or {}).get("output")
                if event.get("output"):
                    try:
                        output = json.loads(event["output"])
                    except (TypeError, ValueError):
                        pass
            error = None if ok else (event.get("error_message") or event.get("message") or "failed")
            attempt = Attempt(doc=doc.role, doc_id=doc.doc_id, task=task, retry_count=retry_count, pid=key,
                              exit_code=None, ok=ok, output=output, error=error,
                              status_code=429 if error and "429" in error else None,
                              where=f"workflow run {run_id[:13]}" + (", replayed" if replay else ""))
            if replay:
                run.replayed_store = attempt
            else:
                run.attempts.append(attempt)
                if ok:
                    run.outputs[task] = output
        if task not in run.outputs:
            if run.of(task):
                run.failed_task = task
            break
    return run


def tie_ledger_to_attempts(ledger: list, keys: dict) -> None:
    """On a server every attempt runs in the worker's one process: replace each request's pid by the key of
    the attempt its X-Lab-Origin names (None when it names none: sent outside any task attempt)."""
    for entry in ledger:
        origin = dict(entry.origin or {})
        task = origin.get("hatchet") or {}
        name = (task.get("task") or "").split(":")[-1]
        origin["pid"] = keys.get((task.get("workflow_run_id"), name, task.get("retry_count")))
        entry.origin = origin


def run_on_server(found: Scenario, docs: list[Doc], lab_target, env: dict, workdir: Path) -> None:
    """Start the student's worker and the course's driver against the engine, then read what it recorded."""
    key = uuid.uuid4().hex[:8]
    env = server_env(env, SERVER, key)
    (workdir / "docs.json").write_text(json.dumps([d.input() for d in docs]))
    worker = proc.start([sys.executable, "-m", lab_target.module("worker")], name="lab09-worker",
                        log_path=workdir / "worker.log", env=env, cwd=workdir, student=True)
    plain = next(d for d in docs if d.role == "plain")
    driver = proc.start([sys.executable, "-m", lab_target.module("server_run"), "docs.json", "server.json",
                         plain.doc_id], name="lab09-server-run", log_path=workdir / "server_run.log", env=env,
                        cwd=workdir, student=True)
    try:
        deadline = time.monotonic() + SERVER_RUN_HANG_S
        while driver.alive and worker.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        if driver.alive:
            what = (f"the worker exited (status {worker.returncode})" if not worker.alive
                    else f"the runs had not ended after {SERVER_RUN_HANG_S:.0f} s")
            raise failed(f"The documents' runs on the Hatchet engine at {SERVER} did not end: {what}",
                         observed=student_error(worker.output()) or tail(worker.output(), 5) or what,
                         expected="the worker (worker.py) stays connected and every run completes or fails",
                         revisit="Run `python -m lab09_hatchet_pipeline.worker` with your token to see it start.",
                         details=tail(worker.output(), 12))
    finally:
        driver.stop()
        worker.stop()
    try:
        result = json.loads((workdir / "server.json").read_text())
    except (OSError, ValueError):
        log = driver.output()
        raise unfinished(log + worker.output(), LAB) or failed(
            f"The course's driver could not run the documents on the Hatchet engine at {SERVER}: "
            f"{student_error(log) or tail(log, 2) or 'no output'}",
            observed=tail(log, 5), expected="every document triggered and its run details written",
            revisit="Check the token and the addresses (HATCHET_CLIENT_TOKEN, HATCHET_CLIENT_HOST_PORT); run "
                    "worker.py and trigger.py by hand (the README's \"A real server\").",
            details=tail(worker.output(), 12)) from None
    keys: dict = {}
    for doc in docs:
        record = result.get("runs", {}).get(doc.doc_id) or {}
        found.runs[doc.role] = attempts_from_engine(doc, record, found.order, keys)
        for attempt in found.runs[doc.role].attempts:
            attempt.log = worker.output()
    found.attempt_keys = keys


@pytest.fixture(scope="module")
def course_llm(tmp_path_factory):
    llm = CourseLLM(tmp_path_factory.mktemp("lab09-llm"), rules_files=[course.COURSE_TOML])
    try:
        llm.launch()
        yield llm
    finally:
        llm.stop()


@pytest.fixture(scope="module")
def scenario(course_llm, lab_target, tmp_path_factory) -> Scenario:
    return run_scenario(course_llm, lab_target, tmp_path_factory.mktemp("lab09-run"))


def run_scenario(course_llm: CourseLLM, lab_target, workdir: Path) -> Scenario:
    """The whole scenario (also `lab demo 09`'s): draw the documents and faults, run them, collect."""
    started = time.monotonic()
    found = Scenario()
    rng = random.Random()
    models = course_models()
    key = f"lab-09-{uuid.uuid4().hex[:8]}"
    found.max_runs, found.other_max_runs = rng.sample(range(2, 9), 2)
    found.dims = rng.choice((8, 12, 20, 24))
    database = workdir / "pipeline.sqlite"
    env = lab_target.python_env(OPENAI_BASE_URL=course_llm.base_url, OPENAI_API_KEY=key,
                                DATABASE_URL=f"sqlite:///{database}", LAB09_MAX_RUNS_PER_PROVIDER=str(found.max_runs),
                                LAB09_EMBED_DIMS=str(found.dims), LAB_SERVER_URL="")
    env.pop("HATCHET_CLIENT_TOKEN", None)  # describe and mock_run run offline, whatever the user has set
    unreachable = unreachable_engine(SERVER, os.environ) if SERVER else None  # before anything is started
    forks = prefork.ForkServer(workdir, PRELOAD, env=env) if prefork.enabled() and not unreachable else None
    try:
        if unreachable:
            raise unreachable
        if forks:
            forks.launch()
            try:
                forks.wait_ready()
            except RuntimeError:  # only speed is lost
                forks.stop()
                forks = None
        engine = Engine(lab_target, workdir, env, forks)
        found.registration, log = engine.describe()
        if found.registration is not None:  # the same workflow, loaded with another limit from the environment
            engine.env = {**env, "LAB09_MAX_RUNS_PER_PROVIDER": str(found.other_max_runs)}
            found.other_registration, _ = engine.describe()
            engine.env = env
        if found.registration is None:
            error = student_error(log) or tail(log, 5) or "no output"
            raise unfinished(error, LAB) or unfinished(log, LAB) or failed(
                f"The workflow could not be loaded: {error}",
                observed="`python -m <lab>.describe` (it imports workflow.py and prints the registration) failed",
                expected="workflow.py imports, and defines `pipeline` = hatchet.workflow(...) with its tasks",
                revisit=("Python could not parse workflow.py: fix the line the error names (nothing in it ran)."
                         if parse_error(log) else
                         "Run `python -m lab09_hatchet_pipeline.describe` in the lab folder's parent to see the error."),
                details=tail(log))
        found.tasks = {t.get("readable_id"): t for t in found.registration.get("tasks", [])}
        course_llm.wait_ready()
        docs = make_docs(rng, models.LABELS, found.retries("classify"))
        course_llm.push_rules(rules_for(docs))
        if set(found.tasks) == set(TASKS):
            found.order = topological(found.tasks)
        else:  # run the declared tasks anyway: a starter's TODO is found this way
            found.order = list(found.tasks)
        found.dag_failure = dag_failure(found.tasks)
        if found.order and found.dag_failure is None and SERVER:
            run_on_server(found, docs, lab_target, env, workdir)
        elif found.order and found.dag_failure is None:
            for doc in docs:
                found.runs[doc.role] = engine.run(doc, found)
            plain = found.runs["plain"]
            if plain.finished:  # the worker died after store's commit, before it reported: store runs again
                parents = {p: plain.outputs[p] for p in found.tasks["store"].get("parents", [])}
                plain.replayed_store = engine.attempt(plain.doc, "store", parents, 1)
        elif found.order:
            probe = engine.attempt(docs[1], found.order[0], {}, 0)  # a starter's TODO shows here
            todo = unfinished(probe.error or "", LAB) or unfinished(probe.log, LAB)
            if todo:
                raise todo
        found.ledger = [e for e in course_llm.ledger().entries(caller=key)]
        if found.attempt_keys is not None:
            tie_ledger_to_attempts(found.ledger, found.attempt_keys)
        found.rows, found.rows_error = read_rows(database)
    except CheckFailed as failure:
        found.failure = failure
    except Exception as err:  # a service that would not start
        found.failure = CheckFailed(f"the lab's services did not start: {type(err).__name__}: {err}")
    finally:
        if forks:
            forks.stop()
    found.seconds = time.monotonic() - started
    found.embed_text = lambda text: models.embed_text(text, found.dims)
    return found


# --- diagnosis -----------------------------------------------------------------------------------

MISSING_PARENT = re.compile(r"Step output for '(\w+)' not found")


def run_failure(run: Run, scenario: Scenario, what: str) -> CheckFailed:
    """Why a document's run did not finish, in the lab's terms."""
    last = run.of(run.failed_task)[-1]
    error = last.error or "no error recorded"
    missing = MISSING_PARENT.search(error) or MISSING_PARENT.search(last.log)
    if missing:
        return failed(f"{what}: {run.failed_task} reads {missing.group(1)}'s output, but {missing.group(1)} is not "
                      f"among its parents",
                      observed=f"{run.failed_task} declares parents {scenario.tasks[run.failed_task].get('parents', [])}; "
                               f"ctx.task_output({missing.group(1)}) raised: {error}",
                      expected=f"every task whose output {run.failed_task} reads listed in its parents=[...]",
                      revisit=REVISIT_PARENTS, details=tail(last.log, 8))
    if last.stuck:
        return failed(f"{what}: {last.note} never finished: it {last.stuck}",
                      observed="the attempt was killed", expected="a task attempt that returns or raises",
                      revisit="Something in the task waits forever: an input(), a lock, a server that never answers.",
                      details=tail(last.log, 8))
    attempts = len(run.of(run.failed_task))
    if "429" in error or "RateLimitError" in error:
        return failed(f"{what}: {run.failed_task} of the {run.doc.role} document ran out of retries on a 429",
                      observed=f"{attempts} attempt(s) of {run.failed_task} (retries={scenario.retries(run.failed_task)}), "
                               f"the last: {error}",
                      expected=f"enough retries on {run.failed_task} for the provider's 429s (this document got "
                               f"{max(run.doc.extract_429, 0) if run.failed_task == 'extract' else run.doc.classify_429})",
                      revisit=REVISIT_RETRIES, details=tail(last.log, 8))
    return failed(f"{what}: {run.failed_task} of the {run.doc.role} document failed {attempts} time(s): {error}",
                  observed=f"every attempt of {run.failed_task} ({attempts}, retries={scenario.retries(run.failed_task)}) "
                           f"raised; the last: {error}",
                  expected="the task returns its output (the check hands it its parents' outputs as mock_run's "
                           "parent_outputs)",
                  revisit="Run `python -m lab09_hatchet_pipeline.local` (mock_run, in process) to see the task fail "
                          "whole.", details=tail(last.log, 12))


def tagged(scenario: Scenario, task: str, doc: Doc) -> list:
    return [e for e in scenario.ledger if (m := TAG.search(e.prompt or "")) and m.groups() == (task, doc.doc_id)]


def sender(scenario: Scenario, entry) -> Attempt | None:
    return scenario.attempt_of_pid((entry.origin or {}).get("pid"))


def rows_of(scenario: Scenario, doc_id: str) -> list[tuple]:
    return [row for row in scenario.rows or [] if row[1] == doc_id]


# --- the checks ----------------------------------------------------------------------------------

@pytest.mark.check("dag-declared")
def test_the_workflow_declares_the_four_tasks_as_a_dag(scenario, evidence):
    """Given workflow.py, when a worker would register it (Workflow.to_proto()),
    then it declares extract, embed, classify and store with parents=[...] so that each runs after
    the tasks whose output it is built from (extract -> embed -> classify -> store)."""
    scenario.require(owner=True)
    evidence["engine"] = ENGINE if SERVER else "hatchet-sdk mock_run, not a server"
    if scenario.dag_failure is not None:
        raise scenario.dag_failure
    evidence["order"] = "->".join(scenario.order)


@pytest.mark.check("inputs-from-parents")
def test_each_task_is_built_from_its_parents_outputs(scenario, evidence):
    """Given documents and LLM replies drawn for this run, when each task runs with its parents'
    outputs (mock_run's parent_outputs), then extract returns the LLM's facts, embed the vector of
    those facts, classify asks about those facts and returns the LLM's label, and store saves the
    three outputs: each task's input is its parents' output, read back by content (on the documents
    without faults; the retried ones are the retry checks')."""
    scenario.require_dag()
    evidence["engine"] = ENGINE
    for role in ("plain", "twin"):  # the retried and exhausted documents are the retry checks'
        run, doc = scenario.runs[role], scenario.runs[role].doc
        if not run.finished:
            raise run_failure(run, scenario, f"The {role} document's run did not finish")
        out = run.outputs
        facts = (out["extract"] or {}).get("facts") if isinstance(out["extract"], dict) else None
        if (facts or "").strip() != doc.facts:
            raise failed(f"extract's output does not hold the facts the LLM answered for {doc.doc_id}",
                         observed=f"extract returned {str(out['extract'])[:300]}",
                         expected=f"Extracted(facts={doc.facts!r}, ...): the reply to extract's prompt",
                         revisit="extract asks the LLM with models.extract_messages(input) and returns its reply as "
                                 "`facts` (an Extracted). " + REVISIT_PARENTS)
        vector = (out["embed"] or {}).get("vector") if isinstance(out["embed"], dict) else None
        if not same_vector(vector, scenario.embed_text(doc.facts)):
            from_input = any(same_vector(vector, scenario.embed_text(text))
                             for text in (doc.body, doc.title, f"{doc.title} {doc.body}", f"{doc.title}\n\n{doc.body}"))
            raise failed(f"embed's vector is not the embedding of extract's facts ({doc.doc_id})",
                         observed=("the vector of the document's own text: embed ignored its parent's output"
                                   if from_input else f"vector {str(vector)[:120]}"),
                         expected=f"models.embed_text(<extract's facts>) ({scenario.dims} dimensions: "
                                  f"LAB09_EMBED_DIMS is set per run)",
                         revisit=REVISIT_PARENTS)
        ok_classify = [a for a in run.of("classify") if a.ok]
        prompts = [e.prompt for e in tagged(scenario, "classify", doc) if sender(scenario, e) in ok_classify]
        if not prompts or doc.facts not in prompts[-1]:
            raise failed(f"classify did not ask about extract's facts ({doc.doc_id})",
                         observed=(f"the successful classify attempt's prompt: {prompts[-1][:300]!r}" if prompts else
                                   "no classify request came from the attempt that returned classify's output"),
                         expected=f"a prompt made with models.classify_messages(doc_id, <extract's facts>, <embed's "
                                  f"vector>), holding {doc.facts!r}",
                         revisit=REVISIT_PARENTS)
        label = (out["classify"] or {}).get("label") if isinstance(out["classify"], dict) else None
        if label != doc.label:
            raise failed(f"classify returned {label!r}, but the LLM answered {doc.label!r} for {doc.doc_id}",
                         observed=f"classify's output {str(out['classify'])[:200]}",
                         expected=f"Classified(label={doc.label!r}) (models.parse_label of the reply)",
                         revisit="classify returns the label the LLM gave, parsed with models.parse_label.")
        rows = rows_of(scenario, doc.doc_id)
        if not rows:  # how many rows a document has (none, two) is store-idempotent's to judge
            continue
        _, _, provider, title, facts_saved, label_saved, vector_saved = rows[-1]
        try:
            vector_saved = json.loads(vector_saved)
        except (TypeError, ValueError):
            pass
        wrong = [name for name, seen, want in (("facts", facts_saved, doc.facts), ("label", label_saved, doc.label),
                                               ("provider", provider, doc.provider), ("title", title, doc.title))
                 if (seen or "").strip() != want]
        if wrong or not same_vector(vector_saved, vector):
            raise failed(f"store's row for {doc.doc_id} does not hold its parents' outputs ({', '.join(wrong) or 'vector'})",
                         observed=f"row: facts={facts_saved!r}, label={label_saved!r}, provider={provider!r}, "
                                  f"title={title!r}, vector={str(vector_saved)[:80]}",
                         expected=f"facts={doc.facts!r} (extract), label={doc.label!r} (classify), embed's vector as "
                                  f"JSON, the input's provider and title",
                         revisit=REVISIT_PARENTS)
    evidence["documents"] = 3


@pytest.mark.check("retry-on-429")
def test_a_429_fails_the_attempt_and_hatchet_retries_the_task(scenario, evidence):
    """Given the LLM answers classify's first R requests with 429 (R = classify's declared retries,
    at most 5) and extract's first request for another document with 429, when the check runs the
    retries each task declares, then every attempt made exactly one request (no retry inside the
    client), each 429 failed its attempt, and the attempt after the last 429 returned the label."""
    scenario.require_dag()
    evidence["engine"] = ENGINE
    for task in LLM_TASKS:
        if scenario.retries(task) < 1:
            raise failed(f"{task} declares no retries: one 429 from a busy provider fails the document",
                         observed=f"{task}: retries={scenario.retries(task)} in the registration",
                         expected=f"@pipeline.task(..., retries=3) on {task} (it calls the LLM)",
                         revisit=REVISIT_RETRIES)
    for role, task in (("twin", "extract"), ("retried", "classify")):
        run, doc = scenario.runs[role], scenario.runs[role].doc
        faults = doc.classify_429 if task == "classify" else doc.extract_429
        entries = tagged(scenario, task, doc)
        per_attempt: dict[int, int] = {}
        for entry in entries:
            pid = (entry.origin or {}).get("pid")
            per_attempt[pid] = per_attempt.get(pid, 0) + 1
        busy = {pid: n for pid, n in per_attempt.items() if n > 1}
        if busy:
            attempt = scenario.attempt_of_pid(next(iter(busy)))
            raise failed(f"One attempt of {task} sent {max(busy.values())} requests: the 429 was retried inside the "
                         f"attempt, not by Hatchet",
                         observed=f"{attempt.note if attempt else 'one process'} sent {max(busy.values())} {task} "
                                  f"requests ({sum(1 for e in entries if e.status == 429)} answered 429)",
                         expected="one request per attempt; a 429 fails the attempt and the next attempt is Hatchet's",
                         revisit=REVISIT_RETRIES)
        attempts = run.of(task)
        ok = [a for a in attempts if a.ok]
        if ok and ok[0].retry_count < faults and len(entries) <= ok[0].retry_count + 1:
            raise failed(f"{task} of {doc.doc_id} returned although the LLM answered it 429: the error was swallowed",
                         observed=f"attempt {ok[0].retry_count + 1} returned {str(ok[0].output)[:200]} after its "
                                  f"request was answered 429",
                         expected=f"the first {faults} attempt(s) raise (the 429 reaches Hatchet), attempt {faults + 1} "
                                  f"returns the LLM's answer",
                         revisit=REVISIT_RETRIES)
        if not ok:
            if len(attempts) <= faults:
                raise failed(f"{task} of {doc.doc_id} ran out of retries before the provider answered",
                             observed=f"{len(attempts)} attempt(s) (retries={scenario.retries(task)}), all failed: "
                                      f"{attempts[-1].error}",
                             expected=f"{faults} attempts answered 429, then one more that succeeds",
                             revisit=REVISIT_RETRIES)
            raise run_failure(run, scenario, f"{task} of the {role} document never succeeded")
        if len(attempts) != faults + 1 or any(a.ok for a in attempts[:-1]):
            raise failed(f"{task} of {doc.doc_id} took {len(attempts)} attempt(s) for {faults} 429(s)",
                         observed="; ".join(f"retry_count {a.retry_count}: {'ok' if a.ok else a.error}" for a in attempts),
                         expected=f"{faults} failed attempt(s), then one that returns",
                         revisit=REVISIT_RETRIES)
        answer = run.doc.label if task == "classify" else run.doc.facts
        if answer not in json.dumps(ok[0].output):
            raise failed(f"{task} of {doc.doc_id} returned {str(ok[0].output)[:160]} after its retries, not the "
                         f"LLM's answer {answer!r}",
                         observed=f"attempt {ok[0].retry_count + 1} returned {str(ok[0].output)[:200]}",
                         expected=f"the answer to the request that succeeded: {answer!r}",
                         revisit=REVISIT_RETRIES)
    evidence["classify_attempts"] = len(scenario.runs["retried"].of("classify"))


@pytest.mark.check("earlier-calls-once")
def test_a_retried_task_does_not_redo_its_parents_llm_calls(scenario, evidence):
    """Given classify failed and was retried, when the ledger is read (each request tied to the pid
    of the task attempt that sent it), then extract's prompt was answered once per document, sent by
    extract's attempt, and every classify request came from a classify attempt: the retry re-ran
    classify alone and reused extract's recorded output."""
    scenario.require_dag()
    evidence["engine"] = ENGINE
    unknown = [e for e in scenario.ledger if sender(scenario, e) is None]
    if unknown:
        entry = unknown[0]
        raise failed(f"{len(unknown)} LLM request(s) came from no task attempt the check ran",
                     observed=f"a request with origin {entry.origin} and prompt {entry.prompt[:120]!r}",
                     expected="every request sent by a task attempt (the check ties each to its process)",
                     revisit="Call the LLM inside the tasks, not at import time or from a thread that outlives them.")
    untagged = [e for e in scenario.ledger if not TAG.search(e.prompt or "")]
    if untagged:
        attempt = sender(scenario, untagged[0])
        raise failed(f"{attempt.note} sent a prompt without the course's tag",
                     observed=f"prompt {untagged[0].prompt[:160]!r}",
                     expected="prompts made with models.extract_messages / models.classify_messages "
                              "(their tag tells the course LLM which reply to give)",
                     revisit="Build the messages with the course's functions in models.py.")
    for entry in scenario.ledger:
        attempt, (task, doc_id) = sender(scenario, entry), TAG.search(entry.prompt).groups()
        if attempt.task != task:
            raise failed(f"{attempt.note} sent {task}'s prompt: it re-did {task}'s work instead of reading its output",
                         observed=f"a [{task}] request for {doc_id} from the {attempt.task} attempt (pid {attempt.pid})",
                         expected=f"{task}'s LLM call made by {task} alone, once; {attempt.task} reads it with "
                                  f"ctx.task_output({task})",
                         revisit=REVISIT_PARENTS)
    for run in scenario.runs.values():
        answered = [e for e in tagged(scenario, "extract", run.doc) if e.ok]
        if len(answered) > 1:
            raise failed(f"extract's LLM call for {run.doc.doc_id} was answered {len(answered)} times",
                         observed=f"{len(answered)} successful extract requests, from "
                                  f"{sorted({sender(scenario, e).note for e in answered})}",
                         expected="one: extract succeeded once, and later retries reuse its output",
                         revisit=REVISIT_PARENTS)
    evidence["llm_calls"] = len(scenario.ledger)


@pytest.mark.check("exhausted-fails")
def test_a_429_that_outlasts_the_retries_fails_the_run(scenario, evidence):
    """Given the LLM answers classify 429 every time for one document, when classify's declared
    retries are spent, then every attempt raised, the run failed at classify, store never ran and
    no row exists for that document: the failure is visible, not a default label."""
    scenario.require_dag()
    evidence["engine"] = ENGINE
    run, doc = scenario.runs["exhausted"], scenario.runs["exhausted"].doc
    attempts = run.of("classify")
    if run.failed_task not in (None, "classify"):
        raise NotChecked(f"not checked: the exhausted document's run failed earlier, in {run.failed_task}")
    swallowed = [a for a in attempts if a.ok]
    if swallowed:
        raise failed(f"classify returned {str(swallowed[0].output)[:120]} for {doc.doc_id} although the LLM answered "
                     f"every request 429",
                     observed=f"attempt {swallowed[0].retry_count + 1} returned; store then ran "
                              f"({len(rows_of(scenario, doc.doc_id))} row(s) saved for a document never classified)",
                     expected=f"all {scenario.retries('classify') + 1} attempts raise, the run fails at classify, "
                              f"nothing is stored",
                     revisit="A fallback label hides the outage: the document looks processed and is wrong. "
                             + REVISIT_RETRIES)
    statuses = [e.status for e in tagged(scenario, "classify", doc)]
    if attempts and len(statuses) < len(attempts) and not any("429" in (a.error or "") for a in attempts):
        raise NotChecked(f"not checked: classify of {doc.doc_id} failed before it asked the LLM "
                         f"({attempts[-1].error})")
    if len(attempts) != scenario.retries("classify") + 1 or any(s != 429 for s in statuses):
        raise failed(f"classify of {doc.doc_id}: {len(attempts)} attempt(s), LLM statuses {statuses}",
                     observed="; ".join(f"retry_count {a.retry_count}: {a.error}" for a in attempts),
                     expected=f"{scenario.retries('classify') + 1} attempts, each one request answered 429",
                     revisit=REVISIT_RETRIES)
    if run.of("store") or rows_of(scenario, doc.doc_id):
        raise failed(f"store ran for {doc.doc_id}, whose classify failed",
                     observed=f"{len(run.of('store'))} store attempt(s), {len(rows_of(scenario, doc.doc_id))} row(s)",
                     expected="no store, no row", revisit=REVISIT_PARENTS)
    evidence["attempts"] = len(attempts)


@pytest.mark.check("store-idempotent")
def test_store_run_twice_leaves_one_row_per_document(scenario, evidence):
    """Given a document stored once, when store runs again with the same parents' outputs (a worker
    that died after the commit, before it reported), then it succeeds and the table still holds one
    row for that document id, with the same content; a second document with the same text but its
    own id has its own row."""
    scenario.require_dag()
    evidence["engine"] = ENGINE
    plain, twin = scenario.runs["plain"], scenario.runs["twin"]
    if not plain.finished:
        raise NotChecked(f"not checked: the plain document's run did not finish (in {plain.failed_task})")
    if scenario.rows is None:
        raise failed("The pipeline's table could not be read", observed=scenario.rows_error or "",
                     expected="store writes ProcessedDocument rows (db.py) to DATABASE_URL",
                     revisit="store opens db.engine() (it reads DATABASE_URL) and writes ProcessedDocument rows.")
    again = plain.replayed_store
    if again is None or not again.ok:
        error = (again.error if again else None) or "no result"
        duplicate = "IntegrityError" in error or "UNIQUE constraint" in error
        raise failed(f"store failed when it ran a second time for {plain.doc.doc_id}: {error.splitlines()[0][:200]}",
                     observed=("the database refused a second row for the same doc_id (the column is unique): store "
                               "inserts without looking first" if duplicate else f"the second run raised: {error[:300]}"),
                     expected="the second run finds the row by doc_id and succeeds, leaving one row",
                     revisit=REVISIT_IDEMPOTENT, details=tail(again.log, 8) if again else "")
    for run in scenario.runs.values():
        if not run.finished or rows_of(scenario, run.doc.doc_id) or run is twin:
            continue
        raise failed(f"store returned for {run.doc.doc_id}, but the table has no row for it",
                     observed=f"store returned {str(run.outputs.get('store'))[:160]}; the table's doc_ids: "
                              f"{[r[1] for r in scenario.rows]}",
                     expected="one ProcessedDocument row per finished document, written to DATABASE_URL",
                     revisit="store writes with db.engine() (it reads DATABASE_URL) and commits.")
    rows = rows_of(scenario, plain.doc.doc_id)
    if len(rows) != 1:
        raise failed(f"{len(rows)} rows for {plain.doc.doc_id} after store ran twice",
                     observed=f"rows: {[r[:2] for r in rows]}", expected="exactly one row per document id",
                     revisit=REVISIT_IDEMPOTENT)
    if rows[0][4] != plain.doc.facts or rows[0][5] != plain.doc.label:
        raise failed(f"after the second store the row for {plain.doc.doc_id} holds other content",
                     observed=f"facts={rows[0][4]!r}, label={rows[0][5]!r}",
                     expected=f"facts={plain.doc.facts!r}, label={plain.doc.label!r}", revisit=REVISIT_IDEMPOTENT)
    if twin.finished and len(rows_of(scenario, twin.doc.doc_id)) != 1:
        raise failed(f"{twin.doc.doc_id} has {len(rows_of(scenario, twin.doc.doc_id))} rows: it has the same text "
                     f"as {plain.doc.doc_id} but is another document",
                     observed=f"store returned {str(twin.outputs.get('store'))[:160]} for it; the table has "
                              f"{[r[1] for r in scenario.rows]}",
                     expected="one row per document id: two documents that say the same thing are still two",
                     revisit="The key of the write is the document id, not a hash of its content. " + REVISIT_IDEMPOTENT)
    evidence["rows"] = len(scenario.rows)


def limit_verdicts(registration: dict, task: str, max_runs: int, docs: tuple[dict, dict, dict]) -> list[str] | None:
    """None when a concurrency expression covering `task` is a queueing limit of max_runs per provider;
    else what each declared limit is instead."""
    tasks = {t.get("readable_id"): t for t in registration.get("tasks", [])}
    limits = ([registration["concurrency"]] if registration.get("concurrency") else []) + \
        list(registration.get("concurrency_arr", [])) + list(tasks.get(task, {}).get("concurrency", []))
    if not limits:
        return [f"the registration has no concurrency on the workflow or on {task}"]
    one, same, other = docs
    verdicts = []
    for limit in limits:
        expression = limit.get("expression", "")
        try:
            keys = [cel_value(expression, doc) for doc in (one, same, other)]
        except Unsupported as err:
            verdicts.append(f"{expression!r}: {err}")
            continue
        if keys[0] != keys[1]:
            verdicts.append(f"{expression!r} gives two documents of one provider different keys ({keys[0]!r}, "
                            f"{keys[1]!r}): a limit per document, not per provider")
        elif keys[0] == keys[2]:
            verdicts.append(f"{expression!r} gives every provider the same key ({keys[0]!r}): one limit for all "
                            f"providers together")
        elif str(limit.get("max_runs")) != str(max_runs):
            verdicts.append(f"{expression!r} has max_runs={limit.get('max_runs')!r} when "
                            f"LAB09_MAX_RUNS_PER_PROVIDER={max_runs} (models.MAX_RUNS_PER_PROVIDER reads it)")
        elif limit.get("limit_strategy") not in QUEUEING:
            verdicts.append(f"{expression!r} uses {limit.get('limit_strategy')}: a run over the limit is "
                            f"cancelled, so its document is never processed")
        else:
            return None
    return verdicts


@pytest.mark.check("concurrency-per-provider")
def test_the_workflow_limits_concurrent_runs_per_provider(scenario, evidence):
    """Given LAB09_MAX_RUNS_PER_PROVIDER drawn twice for this run (the workflow loaded once with each),
    when the registration a worker would send is read (mock_run has no scheduler, so nothing here can
    watch runs wait), then every task that calls the LLM falls under a concurrency expression whose
    key is the same for two documents of one provider and differs between providers, with max_runs =
    the number the environment gave and a strategy that queues rather than cancels."""
    if scenario.registration is None or (scenario.failure and scenario.failure.summary.startswith("Not implemented")):
        scenario.require()  # the declaration is all this check needs: a run that failed later does not block it
    evidence["engine"] = f"{ENGINE} (declaration read, not watched)"
    a, b = random.Random().sample(PROVIDERS, 2)
    docs = ({"doc_id": "doc-a1", "provider": a, "title": "Lease 101", "body": "rent due"},
            {"doc_id": "doc-a2", "provider": a, "title": "Invoice 202", "body": "chairs"},
            {"doc_id": "doc-b1", "provider": b, "title": "Lease 101", "body": "rent due"})
    loads = [(scenario.registration, scenario.max_runs), (scenario.other_registration, scenario.other_max_runs)]
    for registration, max_runs in loads:
        if registration is None:
            raise NotChecked("not checked: the workflow did not load with another LAB09_MAX_RUNS_PER_PROVIDER")
        for task in LLM_TASKS:
            verdicts = limit_verdicts(registration, task, max_runs, docs)
            if verdicts is not None:
                raise failed(f"The concurrency declared for {task} is not a limit of "
                             f"{max_runs} runs per provider",
                             observed="; ".join(verdicts),
                             expected=f"a key of input.provider, max_runs={max_runs} (from the environment), "
                                      f"a strategy that queues ({', '.join(QUEUEING)})",
                             revisit=REVISIT_CONCURRENCY)
    evidence["max_runs"] = f"{scenario.max_runs},{scenario.other_max_runs}"
