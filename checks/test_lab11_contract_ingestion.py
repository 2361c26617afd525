"""Lab 11 autograder: contract ingestion orchestrated, with no silent failures.

Scenario, run once for the module against fresh real servers (Temporal dev server, PostgreSQL, the
course LLM with its /v1/embeddings):
  Given N contracts (N, their word counts and which of them fail are drawn from a seed per run; two of
    them have exactly 99 and 100 words), uploaded by the check into the lab's tables (a document row and
    a document.uploaded event on the bus), two embedding models named for this run, and the course LLM
    told that, for this run only:
      - the primary model is down for some documents (every request answers 503),
      - both models are down for one or two of those ("dead" documents),
      - the primary fails the first request only for a few others ("flaky": a retry heals them);
  When the student's worker (a real process, as on its own host) runs one IngestWorkflow per document,
    and the course's audit consumer (choreography.py audit, its own process) listens to the bus,
  Then each check reads its evidence from outside the student's processes: the course LLM's ledger (each
    embeddings request tied to the activity attempt that sent it, X-Lab-Origin), the Temporal histories,
    the lab's PostgreSQL tables (vectors compared with what the course LLM answers for that model and
    text: labkit.llm.embeddings), the events on the bus and the audit log, and a replay of every history.
Nothing waits for a fixed time: waits end on states (workflows closed, the audit log caught up), and a
run that stops changing for PATIENCE_S is a hang verdict. Measured, never asserted: how long after a
document's first failed embedding request an operator could see it (its first alert event or its
failed workflow); bench/README.md keeps the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from temporalio.api.enums.v1 import EventType, RetryState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowHistory

from labkit import proc, temporal
from labkit.feedback import CheckFailed, NotChecked, student_error, tail, unfinished
from labkit.harness import WorkerHarness
from labkit.llm import LedgerEntry
from labkit.llm.embeddings import vector as expected_vector
from labkit.replays import ReplaySet
from scenario_lab11_contract_ingestion import (QC_MIN_WORDS, STAGE_EVENTS, Doc, doc_of, embedding_rules,
                                               make_docs, same_vector)

LAB = "11"
RUNAWAY_ATTEMPTS = 6  # an activity still retried past this attempt has a retry policy that never gives up
PATIENCE_S = 90.0  # hang guard: nothing changed (workflows closed, attempts, LLM requests) for this long
HANG_S = 900.0  # the whole run's hang guard

CASE_STUDY = "§64.2.2's case study (contract ingestion)"
REVISIT_SWALLOW = (f"{CASE_STUDY}: the embedding failed silently and the notification still said success. "
                   "A stage that catches its error and returns something anyway hides the failure from everyone "
                   "after it. Let embed_document raise: the attempt fails, Temporal retries it, and when the "
                   "attempts run out the workflow gets an ActivityError it can act on.")
REVISIT_FALLBACK = ("Wrap the primary model's embed_document in try/except ActivityError (it is raised once its "
                    "retry policy's attempts are used up) and, in the except branch, run embed_document again "
                    "with FALLBACK_MODEL from models.py (the model names come from the environment: the check "
                    "picks its own).")
REVISIT_RETRIES = ("Temporal's retries repeat the same activity with the same input: give the primary model's "
                   "embed_document a RetryPolicy with maximum_attempts of 2 or more, so a passing error heals on "
                   "a retry; switching models is the workflow's decision, made only after those attempts are "
                   "used up (the ActivityError).")
REVISIT_QC = (f"{CASE_STUDY}: the quality check is skipped for documents under 100 words. Decide it in the "
              "workflow from extract_document's word count: run check_quality when words >= QC_MIN_WORDS, "
              "else skip it (and say so on the bus, if you like).")
REVISIT_NOTIFY = ("A document is searchable only once its vector is stored: await store_embedding before you "
                  "schedule notify_user. Started together (asyncio.gather) or in the other order, the user can be "
                  "told 'ready' while the store is still running, or failing.")
REVISIT_SURFACE = (f"{CASE_STUDY}: users found the missing documents days later, because nothing failed where an "
                   "operator looks. When a model fails, publish a pipeline.alert event (emit_event) naming the "
                   "document; when no model can embed it, let the workflow fail (raise ApplicationError, "
                   "non_retryable) after telling the user: a failed workflow is on every Temporal dashboard.")
REVISIT_EVENTS = ("Analytics and audit stay choreographed: the workflow publishes what happened (emit_event with "
                  "EventV1: document.extracted, document.embedded, document.stored, document.notified) and the "
                  "audit and analytics teams' consumers react, without the workflow knowing they exist.")


# The run's documents (Doc, make_docs) and the LLM's rules that fail them: scenario_lab11_contract_ingestion,
# shared with the crash sweep (`lab sweep 11`).


# --- evidence ----------------------------------------------------------------------------------------

@dataclass
class Scenario:
    seed: int
    key: str
    primary: str
    fallback: str
    dimensions: int
    docs: list[Doc] = field(default_factory=list)
    task_queue: str = ""
    embeds: list[LedgerEntry] = field(default_factory=list)  # the run's embeddings requests, in order
    vectors: dict[str, tuple[str, list[float], datetime]] = field(default_factory=dict)  # doc -> model, vector, at
    notifications: dict[str, dict[str, datetime]] = field(default_factory=dict)  # doc -> status -> sent_at
    quality: set[str] = field(default_factory=set)  # docs with a quality_checks row
    events: list[tuple] = field(default_factory=list)  # (id, type, doc_id, payload, source, at)
    audited: set[int] = field(default_factory=set)  # event ids in audit_log
    replay: object = None
    failure: CheckFailed | None = None
    failure_owner: str = "no-silent-failures"  # the check whose concept the scenario's failure is about
    worker_log: str = ""

    def require(self, check: str) -> Scenario:
        """The scenario, if it ran to the end; else its failure for the check that owns it, and
        "not checked" for the others."""
        if self.failure is not None:
            if check == self.failure_owner:
                raise self.failure
            raise NotChecked(f"not checked: the ingestion run did not finish ({self.failure.summary})")
        return self

    def of(self, *roles: str) -> list[Doc]:
        return [d for d in self.docs if d.role in roles]

    def embeds_of(self, doc: Doc) -> list[LedgerEntry]:
        return [e for e in self.embeds if doc_of(e) == doc.doc_id]

    def events_of(self, doc: Doc, type: str | None = None) -> list[tuple]:
        return [e for e in self.events if e[2] == doc.doc_id and (type is None or e[1] == type)]


def attempt_of(entry: LedgerEntry) -> int | None:
    activity = (entry.origin or {}).get("activity") or {}
    return activity.get("attempt")


def event_kinds(history: WorkflowHistory) -> list[tuple[int, str, object]]:
    return [(e.event_id, EventType.Name(e.event_type).removeprefix("EVENT_TYPE_"), e) for e in history.events]


@dataclass
class Act:
    name: str
    scheduled_id: int
    input: object
    max_attempts: int
    closed_id: int | None = None
    outcome: str = "pending"
    attempt: int = 0
    retry_state: int = 0
    closed_at: datetime | None = None


def activities(history: WorkflowHistory) -> list[Act]:
    from temporalio.converter import DataConverter

    converter = DataConverter.default.payload_converter
    found: dict[int, Act] = {}
    for event_id, kind, event in event_kinds(history):
        if kind == "ACTIVITY_TASK_SCHEDULED":
            attrs = event.activity_task_scheduled_event_attributes
            try:
                value = converter.from_payloads(list(attrs.input.payloads))[0]
            except Exception:
                value = None
            found[event_id] = Act(attrs.activity_type.name, event_id, value, attrs.retry_policy.maximum_attempts)
        elif kind == "ACTIVITY_TASK_STARTED":
            attrs = event.activity_task_started_event_attributes
            found[attrs.scheduled_event_id].attempt = attrs.attempt
        elif kind in ("ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT",
                      "ACTIVITY_TASK_CANCELED"):
            attrs = getattr(event, kind.lower() + "_event_attributes")
            act = found[attrs.scheduled_event_id]
            act.closed_id, act.outcome = event_id, kind.removeprefix("ACTIVITY_TASK_").lower()
            act.closed_at = event.event_time.ToDatetime(tzinfo=timezone.utc)
            if kind == "ACTIVITY_TASK_FAILED":
                act.retry_state = attrs.retry_state
    return list(found.values())


def field_of(value, name: str):
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def workflow_closed_at(history: WorkflowHistory | None) -> datetime | None:
    if history is None or not history.events:
        return None
    last = history.events[-1]
    if last.event_type in (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
                           EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT):
        return last.event_time.ToDatetime(tzinfo=timezone.utc)
    return None


def ids(docs: list[Doc], most: int = 4) -> str:
    shown = ", ".join(d.doc_id for d in docs[:most])
    return shown + (f" and {len(docs) - most} more" if len(docs) > most else "")


# --- running it ---------------------------------------------------------------------------------------

class Lab11:
    def __init__(self, target, services, postgres, workdir: Path, scenario: Scenario):
        self.target, self.services, self.s = target, services, scenario
        self.db_url = postgres.create_database(f"lab11_{scenario.key}")
        env = {"LAB11_DATABASE_URL": self.db_url, "DATABASE_URL": self.db_url,
               "LAB11_PRIMARY_MODEL": scenario.primary, "LAB11_FALLBACK_MODEL": scenario.fallback,
               "LAB11_EMBED_DIMENSIONS": str(scenario.dimensions)}
        self.harness = WorkerHarness(target, services, workdir, lab=LAB, key=scenario.key, wait_for_llm=False,
                                     **env)
        self.audit: proc.ManagedProcess | None = None
        self.workdir = workdir

    def push_rules(self) -> None:
        s = self.s
        self.services.llm.push_rules(embedding_rules(s.key, s.primary, s.docs))

    def upload(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as db:
            for doc in self.s.docs:
                db.execute("INSERT INTO documents (doc_id, title, raw) VALUES (%s, %s, %s)",
                           (doc.doc_id, f"Contract {doc.doc_id}", doc.raw))
                db.execute("INSERT INTO events (type, doc_id, payload, source, dedupe_key) "
                           "VALUES ('document.uploaded', %s, '{}', 'uploader', %s)",
                           (doc.doc_id, f"uploaded:{doc.doc_id}"))

    def schema_ready(self) -> bool:
        try:
            with psycopg.connect(self.db_url, autocommit=True) as db:
                return db.execute("SELECT to_regclass('public.audit_log') IS NOT NULL AND "
                                  "to_regclass('public.events') IS NOT NULL").fetchone()[0]
        except psycopg.Error:
            return False

    def progress(self, closed: int) -> tuple:
        return (closed, len(self.harness.attempts()),
                len(self.services.llm.ledger().entries(caller=self.harness.api_key)))

    async def run(self) -> None:
        s, harness = self.s, self.harness
        client = await Client.connect(self.services.temporal_address)
        worker = harness.start_worker()
        self.push_rules()
        await harness.wait_polling(client, worker)
        # worker.py creates the tables before it polls; the audit team's consumer (course code) then listens.
        if not self.schema_ready():
            raise CheckFailed("The worker polls, but the lab's tables are not in its database",
                              observed="no events/audit_log tables after the worker started",
                              expected="worker.py calls db.ensure_schema() before it polls (the course's worker.py)",
                              revisit="Keep worker.py as the course gives it.", details=tail(worker.output()))
        self.audit = proc.start([sys.executable, "-m", self.target.module("choreography"), "audit"],
                                name="audit", log_path=self.workdir / "audit.log", env=harness.env,
                                cwd=self.workdir)
        replay = harness.replay = ReplaySet(root=self.target.root, module=self.target.module("workflows"))
        self.upload()
        handles: dict[str, WorkflowHandle] = {}
        for doc in s.docs:
            doc.workflow_id = f"lab11-{s.key}-{doc.doc_id}"
            handles[doc.doc_id] = await client.start_workflow(
                "IngestWorkflow", {"doc_id": doc.doc_id}, id=doc.workflow_id, task_queue=harness.task_queue)
        await self.wait_closed(client, worker, handles)
        for doc in s.docs:
            handle = handles[doc.doc_id]
            doc.history = await handle.fetch_history()
            doc.status = WorkflowExecutionStatus((await handle.describe()).status).name
            if doc.status == "COMPLETED":
                doc.result = await handle.result()
        self.raise_unfinished()
        await self.wait_audited()
        self.collect()
        worker.signal_tree(signal.SIGINT)
        s.replay = await asyncio.to_thread(replay.verdict, {d.workflow_id: d.history for d in s.docs}, 120)
        s.worker_log = worker.output()

    async def wait_closed(self, client: Client, worker, handles: dict[str, WorkflowHandle]) -> None:
        s, harness = self.s, self.harness
        open_ids = {d.doc_id for d in s.docs}
        started, last_state, since, turn = time.monotonic(), None, time.monotonic(), 0
        while open_ids:
            harness.require_running(worker, "the workflows ran")
            query = f"TaskQueue = '{harness.task_queue}' AND ExecutionStatus != 'Running'"
            closed = {wf.id async for wf in client.list_workflows(query)}
            open_ids = {d.doc_id for d in s.docs if d.workflow_id not in closed}
            if not open_ids:
                break
            # One open workflow a turn: a workflow task that fails (a TODO, a sandbox error) is a verdict.
            doc_id = sorted(open_ids)[turn % len(open_ids)]
            turn += 1
            failure = await harness.workflow_task_failure(
                handles[doc_id], "IngestWorkflow runs the five stages as activities and returns an IngestResult")
            if failure:
                raise failure
            for p in await temporal.pending_activities(handles[doc_id]):
                if p.attempt > RUNAWAY_ATTEMPTS and p.last_failure:
                    if p.name == "embed_document":
                        s.failure_owner = "retries-before-fallback"
                    raise CheckFailed(
                        f"{p.name} of {doc_id} is at attempt {p.attempt} and still being retried: its retry policy "
                        "never gives up",
                        observed=f"the last attempt failed with: {p.last_failure[:200]}",
                        expected="a RetryPolicy with maximum_attempts, after which the workflow hears of the failure "
                                 "(an ActivityError) and decides: the fallback model, an alert, a failed workflow",
                        revisit=REVISIT_RETRIES + " Without maximum_attempts, Temporal retries for ever and nobody is "
                                "told: another silent failure.",
                        details=tail(worker.output()))
            self.raise_unfinished()
            state = self.progress(len(closed))
            if state != last_state:
                last_state, since = state, time.monotonic()
            if time.monotonic() - since > PATIENCE_S or time.monotonic() - started > HANG_S:
                stuck = sorted(open_ids)[:4]
                raise CheckFailed(
                    f"{len(open_ids)} of {len(s.docs)} IngestWorkflows stopped moving",
                    observed=f"nothing changed for {PATIENCE_S:.0f} s (workflows closed, activity attempts, "
                             f"embedding requests); still running: {', '.join(stuck)}",
                    expected="each workflow runs its stages and completes, or fails, on its own",
                    revisit="Something waits forever: an activity without start_to_close_timeout that never "
                            "returns, a retry policy without maximum_attempts on a model that stays down, or a "
                            "workflow waiting on something no one sends.",
                    details=tail(worker.output()))
            await asyncio.sleep(0.3)

    def raise_unfinished(self) -> None:
        for attempt in self.harness.attempts():
            if attempt.error and (todo := unfinished(attempt.error, LAB)):
                raise todo

    async def wait_audited(self) -> None:
        """The audit consumer (course code) has logged every event on the bus."""
        last, since = None, time.monotonic()
        while True:
            with psycopg.connect(self.db_url, autocommit=True) as db:
                events, audited = db.execute(
                    "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM audit_log)").fetchone()
            if events == audited:
                return
            if not self.audit.alive:
                raise CheckFailed("The course's audit consumer stopped", observed=student_error(self.audit.output())
                                  or f"exit status {self.audit.returncode}", expected="it runs until stopped",
                                  revisit="choreography.py and db.py are the course's: keep them as given.",
                                  details=tail(self.audit.output()))
            if (events, audited) != last:
                last, since = (events, audited), time.monotonic()
            if time.monotonic() - since > PATIENCE_S:
                raise CheckFailed("The audit consumer did not catch up with the bus",
                                  observed=f"{audited} of {events} events logged", expected="all of them",
                                  revisit="choreography.py and db.py are the course's: keep them as given.",
                                  details=tail(self.audit.output()))
            await asyncio.sleep(0.2)

    def collect(self) -> None:
        s = self.s
        s.embeds = [e for e in self.services.llm.ledger().entries(caller=self.harness.api_key)
                    if e.endpoint == "embeddings"]
        with psycopg.connect(self.db_url, autocommit=True) as db:
            for doc_id, model, embedding, at in db.execute(
                    "SELECT doc_id, model, embedding::float4[], stored_at FROM document_vectors"):
                s.vectors[doc_id] = (model, list(embedding or []), at)
            for doc_id, status, at in db.execute("SELECT doc_id, status, sent_at FROM notifications"):
                s.notifications.setdefault(doc_id, {})[status] = at
            s.quality = {row[0] for row in db.execute("SELECT doc_id FROM quality_checks")}
            s.events = list(db.execute("SELECT id, type, doc_id, payload, source, at FROM events ORDER BY id"))
            s.audited = {row[0] for row in db.execute("SELECT event_id FROM audit_log")}

    def close(self) -> None:
        self.harness.close()
        if self.audit is not None:
            self.audit.stop()


@pytest.fixture(scope="module")
def scenario(lab_target, services, postgres, tmp_path_factory) -> Scenario:
    seed = int(os.environ.get("LAB11_SEED") or random.SystemRandom().randrange(10 ** 6))
    rng = random.Random(seed)
    key = uuid.uuid4().hex[:6]
    s = Scenario(seed=seed, key=key, primary=f"embed-primary-{rng.choice(['a', 'b', 'c'])}{key}",
                 fallback=f"embed-fallback-{rng.choice(['x', 'y', 'z'])}{key}", dimensions=rng.choice([16, 24, 32, 48]))
    s.docs = make_docs(rng, key)
    lab = Lab11(lab_target, services, postgres, tmp_path_factory.mktemp("lab11-run"), s)
    s.task_queue = lab.harness.task_queue
    try:
        asyncio.run(lab.run())
    except CheckFailed as failure:
        s.failure = failure
    finally:
        lab.close()
    return s


# --- the checks -----------------------------------------------------------------------------------------

def swallowed(s: Scenario) -> list[tuple[Doc, int, int]]:
    """(doc, the attempt whose embeddings request failed, its status) where that same embed_document attempt
    completed: the activity reported success although the model answered an error."""
    found = []
    for doc in s.docs:
        if doc.history is None:
            continue
        completed = {(field_of(a.input, "model"), a.attempt) for a in activities(doc.history)
                     if a.name == "embed_document" and a.outcome == "completed"}
        for entry in s.embeds_of(doc):
            if not entry.ok and (entry.model, attempt_of(entry)) in completed:
                found.append((doc, attempt_of(entry), entry.status))
                break
    return found


def raise_if_swallowed(s: Scenario, docs: list[Doc], consequence: str) -> None:
    """The verdict for a check whose documents' embed_document swallowed the model's error: that, not what
    the check usually looks for, is what went wrong."""
    hidden = [h for h in swallowed(s) if h[0] in docs]
    if hidden:
        doc, attempt, status = hidden[0]
        raise CheckFailed(
            f"{consequence}: embed_document swallowed the embedding model's error for {len(hidden)} document(s)",
            observed=f"{doc.doc_id}: the model answered HTTP {status} to embed_document attempt {attempt}, and that "
                     "attempt completed, so the workflow saw a success",
            expected="an embedding request that fails makes the activity attempt fail (it raises)",
            revisit=REVISIT_SWALLOW)


@pytest.mark.check("no-silent-failures")
def test_every_document_notified_ready_is_stored(scenario, evidence):
    """Given the run's documents, some of whose embeddings fail,
    When every IngestWorkflow has ended,
    Then every document the user was told is 'ready' has its vector in the index, and that vector is what the
    course LLM answered for its text (from the model the row names): no document is reported done and lost;
    and every document the primary model can embed (at once or on a retry) is stored and reported ready.
    (The choreographed pipeline of the same lab loses the documents whose embedding failed: the notebook.)"""
    s = scenario.require("no-silent-failures")
    ready = [d for d in s.docs if "ready" in s.notifications.get(d.doc_id, {})]
    lost = [d for d in ready if d.doc_id not in s.vectors]
    fake = [d for d in ready if d.doc_id in s.vectors and not same_vector(
        s.vectors[d.doc_id][1], expected_vector(s.vectors[d.doc_id][0], d.text, s.dimensions))]
    evidence["notified_ready"], evidence["stored"] = len(ready), len(s.vectors)
    evidence["silent_failures"] = len(lost) + len(fake)
    hidden = swallowed(s)
    if hidden:
        doc, attempt, status = hidden[0]
        stored = s.vectors.get(doc.doc_id)
        raise CheckFailed(
            f"embed_document reported success for {len(hidden)} document(s) whose embedding request failed: "
            "the error was swallowed",
            observed=f"{doc.doc_id}: the model answered HTTP {status} to embed_document attempt {attempt}, and that "
                     f"attempt completed; stored: {'a vector of ' + str(len(stored[1])) + ' values' if stored else 'nothing'}; "
                     f"notified: {sorted(s.notifications.get(doc.doc_id, {})) or 'no'}. Silent failures in this run: "
                     f"{len(lost) + len(fake)} ({ids(lost + fake)})",
            expected="an embedding request that fails makes the activity attempt fail (it raises)",
            revisit=REVISIT_SWALLOW)
    if lost or fake:
        bad = lost + fake
        raise CheckFailed(
            f"{len(bad)} document(s) were notified 'ready' but their vector is not in the index",
            observed=f"{len(ready)} notified ready, {len(s.vectors)} stored; not stored: {ids(lost) or 'none'}; stored "
                     f"but not the model's vector for the document's text: {ids(fake) or 'none'}",
            expected="'ready' only for documents whose embedding is stored",
            revisit=REVISIT_NOTIFY + " " + REVISIT_SWALLOW)
    # (the documents whose primary is down are fallback-model's: that check names what went wrong there)
    missing = [d for d in s.of("healthy", "flaky") if d not in ready or d.doc_id not in s.vectors]
    if missing:
        doc = missing[0]
        raise CheckFailed(
            f"{len(missing)} document(s) that a model could embed never made it into the index and to the user",
            observed=f"{doc.doc_id} ({doc.role}): workflow {doc.status or 'not started'}; stored: "
                     f"{'yes' if doc.doc_id in s.vectors else 'no'}; notifications: "
                     f"{sorted(s.notifications.get(doc.doc_id, {})) or 'none'}",
            expected="every document the primary model embeds (at once or on a retry) is stored and its user told 'ready'",
            revisit="IngestWorkflow runs all five stages for each document: extract, embed, store, the quality "
                    "check when it applies, notify.")
    unnotified = [d for d in s.docs if d.doc_id in s.vectors and d.doc_id not in {r.doc_id for r in ready}]
    if unnotified:
        raise CheckFailed(
            f"{len(unnotified)} stored document(s) were never notified 'ready'",
            observed=f"stored but no 'ready' notification: {ids(unnotified)}",
            expected="every stored document's user is told it is ready (notify_user with status 'ready')",
            revisit="The last stage, notify_user(NotifyInputV1(doc_id, 'ready', ...)), runs once the vector is stored.")


@pytest.mark.check("fallback-model")
def test_fallback_model_when_the_primary_is_down(scenario, evidence):
    """Given documents for which the primary embedding model is down (every request answers 503),
    Then each of them completes with the fallback model's vector stored (the model the run named in
    LAB11_FALLBACK_MODEL), and no document the primary could embed used the fallback."""
    s = scenario.require("fallback-model")
    down = s.of("down")
    raise_if_swallowed(s, down, "The fallback model was never asked")
    failed = [d for d in down if d.status != "COMPLETED"]
    fell_back = [d for d in down if s.vectors.get(d.doc_id, ("",))[0] == s.fallback]
    evidence["fallback_uses"] = len(fell_back)
    evidence["primary_down"] = len(down)
    asked = sorted({e.model for e in s.embeds})
    if failed:
        tried = [d for d in failed if any(e.model == s.fallback for e in s.embeds_of(d))]
        raise CheckFailed(
            f"{len(failed)} of {len(down)} documents whose primary model was down ended {failed[0].status}"
            + ("" if tried else "; the fallback model was never asked"),
            observed=f"{ids(failed)}; models asked in this run: {asked}",
            expected=f"the fallback model ({s.fallback}) embeds them, and they complete",
            revisit=REVISIT_FALLBACK)
    wrong = [d for d in down if d not in fell_back]
    if wrong:
        doc = wrong[0]
        model, vec, _ = s.vectors.get(doc.doc_id, ("nothing", [], None))
        raise CheckFailed(
            f"{len(wrong)} document(s) whose primary model was down were not stored with the fallback model's vector",
            observed=f"{doc.doc_id}: stored {model!r} ({len(vec)} values); models asked in this run: {asked}",
            expected=f"the vector {s.fallback} gives for the document's text",
            revisit=REVISIT_FALLBACK)
    healthy = s.of("healthy", "flaky")
    misused = [d for d in healthy if any(e.model == s.fallback for e in s.embeds_of(d))
               or s.vectors.get(d.doc_id, (s.primary,))[0] != s.primary]
    if misused:
        doc = misused[0]
        raise CheckFailed(
            f"The fallback model was used for {len(misused)} document(s) the primary model could embed",
            observed=f"{doc.doc_id} ({doc.role}): requests "
                     f"{[(e.model, e.status) for e in s.embeds_of(doc)]}; stored {s.vectors.get(doc.doc_id, ('nothing',))[0]!r}",
            expected=f"{s.primary} for every document it answers (on a retry, if need be)",
            revisit=REVISIT_RETRIES)


@pytest.mark.check("retries-before-fallback")
def test_primary_retries_are_used_up_first(scenario, evidence):
    """Given the same documents, and flaky ones whose primary fails only the first request,
    Then the primary model is asked by embed_document attempts 1..M (M >= 2: the activity's retry policy) and
    the fallback only after the last of them failed (the history: retry state MAXIMUM_ATTEMPTS_REACHED),
    and a flaky document is healed by the retry: stored with the primary model."""
    s = scenario.require("retries-before-fallback")
    raise_if_swallowed(s, s.of("down", "dead", "flaky"), "Temporal had no failure to retry")
    report = []
    for doc in s.of("down", "dead"):
        primary = [e for e in s.embeds_of(doc) if e.model == s.primary]
        attempts = sorted({attempt_of(e) for e in primary if attempt_of(e) is not None})
        fallback = [e for e in s.embeds_of(doc) if e.model == s.fallback]
        embeds = [a for a in activities(doc.history) if a.name == "embed_document"] if doc.history else []
        primary_act = next((a for a in embeds if field_of(a.input, "model") == s.primary), None)
        # How many attempts ran: the history's last attempt (a request lost on the way, say a connection
        # refused on a starved machine, leaves no ledger entry, but the attempt still counts).
        tried = max(primary_act.attempt if primary_act else 0, max(attempts, default=0))
        report.append(tried)
        if tried < 2:
            raise CheckFailed(
                f"The primary model was given up after {tried} attempt(s) of embed_document",
                observed=f"{doc.doc_id}: primary requests from attempts {attempts}"
                         + (", then the fallback" if fallback else "")
                         + (f"; retry policy maximum_attempts={primary_act.max_attempts}" if primary_act else ""),
                expected="a retry policy with maximum_attempts >= 2 on the primary's embed_document: a passing "
                         "failure heals on a retry",
                revisit=REVISIT_RETRIES)
        if fallback and primary and fallback[0].id < primary[-1].id:
            raise CheckFailed(
                "The fallback model was asked before the primary's retries were used up",
                observed=f"{doc.doc_id}: a fallback request came before primary attempt {attempt_of(primary[-1])}",
                expected="the fallback only once the primary's embed_document has failed for good",
                revisit=REVISIT_RETRIES + " " + REVISIT_FALLBACK)
        if primary_act is not None and primary_act.outcome == "failed" and \
                primary_act.retry_state != RetryState.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED:
            raise CheckFailed(
                "The primary model's embed_document failed without using up its retries",
                observed=f"{doc.doc_id}: retry state {RetryState.Name(primary_act.retry_state)}",
                expected="RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED: the model's errors are retryable",
                revisit="A 503 from a model is worth retrying: do not raise it as non_retryable. " + REVISIT_RETRIES)
    for doc in s.of("flaky"):
        primary = [e for e in s.embeds_of(doc) if e.model == s.primary]
        if [e.ok for e in primary][:2] != [False, True] or s.vectors.get(doc.doc_id, ("",))[0] != s.primary:
            raise CheckFailed(
                "A document whose primary model failed once was not healed by a retry",
                observed=f"{doc.doc_id}: requests {[(e.model, e.status, attempt_of(e)) for e in s.embeds_of(doc)]}; "
                         f"stored {s.vectors.get(doc.doc_id, ('nothing',))[0]!r}",
                expected=f"{s.primary} fails attempt 1, answers attempt 2, and its vector is stored",
                revisit=REVISIT_RETRIES)
    evidence["primary_attempts"] = sorted(set(report))


@pytest.mark.check("qc-skipped-short")
def test_quality_check_only_for_100_words_or_more(scenario, evidence):
    """Given documents of 30 to 260 words (one of exactly 99, one of exactly 100),
    Then check_quality ran (an activity in the history and a quality_checks row) for every completed document
    of 100 words or more, and for none under 100."""
    s = scenario.require("qc-skipped-short")
    done = [d for d in s.docs if d.status == "COMPLETED"]
    if not done:
        raise NotChecked("not checked: no IngestWorkflow completed")
    ran = {d.doc_id for d in done if any(a.name == "check_quality" for a in activities(d.history))} | \
        ({d.doc_id for d in done} & s.quality)
    short_checked = sorted((d for d in done if d.words < QC_MIN_WORDS and d.doc_id in ran), key=lambda d: -d.words)
    long_skipped = sorted((d for d in done if d.words >= QC_MIN_WORDS and d.doc_id not in ran), key=lambda d: d.words)
    evidence["qc_skipped"] = sum(1 for d in done if d.doc_id not in ran)
    evidence["qc_ran"] = len(ran)
    if short_checked:
        raise CheckFailed(
            f"The quality check ran for {len(short_checked)} document(s) under {QC_MIN_WORDS} words",
            observed=", ".join(f"{d.doc_id} ({d.words} words)" for d in short_checked[:4]),
            expected=f"no check_quality for documents under {QC_MIN_WORDS} words",
            revisit=REVISIT_QC)
    if long_skipped:
        raise CheckFailed(
            f"The quality check was skipped for {len(long_skipped)} document(s) of {QC_MIN_WORDS} words or more",
            observed=", ".join(f"{d.doc_id} ({d.words} words)" for d in long_skipped[:4]),
            expected=f"check_quality for every document of {QC_MIN_WORDS} words or more",
            revisit=REVISIT_QC)


@pytest.mark.check("notify-after-store")
def test_notify_only_after_the_store_completed(scenario, evidence):
    """Then, in every history that told the user 'ready', notify_user was scheduled only after store_embedding
    had completed (the order of the history's events: the same on any machine), and the notification row is
    no older than the vector row."""
    s = scenario.require("notify-after-store")
    early = []
    for doc in s.docs:
        if doc.history is None:
            continue
        acts = activities(doc.history)
        stores = [a for a in acts if a.name == "store_embedding"]
        for notify in (a for a in acts if a.name == "notify_user" and field_of(a.input, "status") == "ready"):
            stored_before = any(a.outcome == "completed" and a.closed_id < notify.scheduled_id for a in stores)
            if not stored_before:
                early.append((doc, "no store_embedding had completed when notify_user was scheduled"))
                break
        sent = s.notifications.get(doc.doc_id, {}).get("ready")
        stored = s.vectors.get(doc.doc_id)
        if sent and stored and sent < stored[2] and not any(e[0] is doc for e in early):
            early.append((doc, f"the 'ready' notification ({sent:%H:%M:%S.%f}) is older than the vector "
                               f"({stored[2]:%H:%M:%S.%f})"))
    evidence["notified_before_store"] = len(early)
    if early:
        doc, why = early[0]
        raise CheckFailed(
            f"The user was told 'ready' before the vector was stored, for {len(early)} document(s)",
            observed=f"{doc.doc_id}: {why}", expected="notify_user scheduled after store_embedding completed",
            revisit=REVISIT_NOTIFY)


@pytest.mark.check("failures-surface")
def test_failures_reach_an_operator(scenario, evidence):
    """Given the documents no model can embed, and those whose primary model is down,
    Then each dead document's workflow FAILED and its user was not told 'ready', and every document whose
    embedding failed has a pipeline.alert event on the bus naming it. Measured: from a document's first failed
    embedding request to its first signal (an alert event or its failed workflow)."""
    s = scenario.require("failures-surface")
    dead = s.of("dead")
    raise_if_swallowed(s, s.of("down", "dead"), "No failure reached an operator")
    completed = [d for d in dead if d.status == "COMPLETED"]
    told_ready = [d for d in dead if "ready" in s.notifications.get(d.doc_id, {})]
    delays = []
    for doc in s.of("down", "dead"):
        faults = [e for e in s.embeds_of(doc) if not e.ok]
        signals = [e[5] for e in s.events_of(doc, "pipeline.alert")]
        if (closed := workflow_closed_at(doc.history)) is not None:
            signals.append(closed)
        if faults and signals:
            delays.append(min(signals).timestamp() - faults[0].at)
    if delays:
        evidence["fault_to_signal_s"] = f"median {statistics.median(delays):.2f} max {max(delays):.2f}"
    if completed or told_ready:
        doc = (completed or told_ready)[0]
        raise CheckFailed(
            f"A document no embedding model could embed did not fail: {len(completed)} of {len(dead)} such "
            f"workflows COMPLETED, {len(told_ready)} users told 'ready'",
            observed=f"{doc.doc_id}: workflow {doc.status}; notifications {sorted(s.notifications.get(doc.doc_id, {}))}",
            expected="the workflow FAILED (and the user was not told 'ready')", revisit=REVISIT_SURFACE)
    unfailed = [d for d in dead if d.status != "FAILED"]
    if unfailed:
        raise CheckFailed(f"{len(unfailed)} workflow(s) of documents no model could embed did not fail",
                          observed=f"{unfailed[0].doc_id}: {unfailed[0].status}", expected="FAILED",
                          revisit=REVISIT_SURFACE)
    silent = [d for d in s.of("down", "dead") if not s.events_of(d, "pipeline.alert")]
    if silent:
        raise CheckFailed(
            f"{len(silent)} document(s) whose embedding failed have no pipeline.alert event on the bus",
            observed=f"{ids(silent)}; alert events in this run: "
                     f"{sum(1 for e in s.events if e[1] == 'pipeline.alert')}",
            expected="a pipeline.alert event naming each document whose embedding model failed",
            revisit=REVISIT_SURFACE)


@pytest.mark.check("events-choreographed")
def test_analytics_and_audit_still_hear_every_stage(scenario, evidence):
    """Then, for every completed document, the bus holds the workflow's stage events (document.extracted,
    document.embedded, document.stored, document.notified), once each and in that order, and the course's audit
    consumer, a separate process reacting to the bus, logged every event."""
    s = scenario.require("events-choreographed")
    done = [d for d in s.docs if d.status == "COMPLETED"]
    if not done:
        raise NotChecked("not checked: no IngestWorkflow completed")
    for doc in done:
        found = [e[1] for e in s.events_of(doc) if e[1] in STAGE_EVENTS]
        if found != list(STAGE_EVENTS):
            missing = [t for t in STAGE_EVENTS if t not in found]
            raise CheckFailed(
                "The workflow did not publish its stage events for every document, once each, in order"
                if not missing else f"The workflow published no {missing[0]} event for {doc.doc_id}",
                observed=f"{doc.doc_id}: stage events on the bus: {found}",
                expected=f"{list(STAGE_EVENTS)}", revisit=REVISIT_EVENTS)
    not_logged = [e for e in s.events if e[0] not in s.audited]
    evidence["events"], evidence["audited"] = len(s.events), len(s.audited)
    if not_logged:
        raise CheckFailed(f"{len(not_logged)} events were not audited", observed=f"e.g. {not_logged[0][1]}",
                          expected="audit_log holds every event", revisit=REVISIT_EVENTS)


@pytest.mark.check("history-replays")
def test_histories_replay(scenario, evidence):
    """Then every recorded history replays against the workflow code in a separate process."""
    s = scenario.require("history-replays")
    verdict = s.replay
    if verdict is None:
        raise NotChecked("not checked: the replay did not run")
    evidence["replayed"] = len(verdict.results) if verdict.ok else "no"
    if not verdict.ok:
        failures = verdict.failures()
        raise CheckFailed(
            "A recorded history does not replay against your workflow code",
            observed="; ".join(f"{wid}: {err[:200]}" for wid, err in list(failures.items())[:3]) or verdict.error,
            expected="the same decisions on replay",
            revisit="Workflow code is replayed: the fallback and the QC decision must depend only on activity "
                    "results and the input, never on clocks, randomness or I/O in the workflow.",
            details=verdict.detail)
