"""Lab 11's scenario: IngestWorkflow runs survive a worker SIGKILLed at random moments.

The check (checks/test_lab11_contract_ingestion.py) and the sweep (`lab sweep 11`) share this module:
the run's contracts (their text and which of them the embedding models fail), the course LLM's rules
that fail them, and how an embeddings request is tied to its document. The check runs some fifty
documents once, without a kill, and teaches from what it sees; the sweep below (`Sweep`) runs a few
documents and kills the worker at seeded random moments.

Sweep, per trial: a fresh task queue, LLM key and PostgreSQL database; one worker (forked from a warm
interpreter when one runs); `subjects` contracts uploaded, then one IngestWorkflow each, started
`start_gap_s` apart. Some documents' primary embedding model is down (the fallback runs), one has no
model that answers (its workflow fails with an alert), one fails its first request only (a retry
heals it); every embeddings request answers `latency_ms` late, so kills land while one is in flight.
After each kill the next worker starts as on another host (labkit.harness: a fresh cwd and HOME).

Logical LLM call: the embedding of document D by model M = the ledger's embeddings entries whose text
names D and whose model is M (the primary's successor is the fallback); recorded = an embed_document
of M completed in D's history. The model's own 503/500 answers are injected faults (each explains one
repeat). Invariants verified at the end: every workflow ends as the lab says (COMPLETED, stored with
the primary's vector, or the fallback's when the primary is down, and notified 'ready'; or FAILED,
with a pipeline.alert event and a 'failed' notification, when no model can embed it); exactly one
vector row per stored document, and it is the model's vector for the document's text; 'ready' only
after store_embedding completed (history order) and no older than the vector row; each stage event
once; no embeddings request for a document of no run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowHistory

from labkit import course, prefork
from labkit.llm import LedgerEntry
from labkit.llm.embeddings import vector as expected_vector
from labkit.pytest_plugin import Services
from labkit.services import CourseLLM, TemporalServer
from labkit.sweep import LogicalCall, Violation
from labkit.sweep_kit import graded_copy
from labkit.sweep_temporal import STARTED, WORKFLOW_TASK_TIMEOUT, ForkedWorkers, WorkerScenario, release_dead_worker, results_of

QC_MIN_WORDS = 100  # the case study's rule, as in the lab's models.py
DOC_REF = re.compile(r"Contract reference: ([\w-]+)\.")
STAGE_EVENTS = ("document.extracted", "document.embedded", "document.stored", "document.notified")
PRELOAD = ["temporalio.client", "temporalio.worker", "temporalio.workflow", "temporalio.activity",
           "temporalio.common", "temporalio.exceptions", "openai", "psycopg"]


# --- shared by the check and the sweep -----------------------------------------------------------

FILLER = ("services", "delivery", "schedule", "acceptance", "warranty", "renewal", "notice", "invoice",
          "annex", "party", "obligation", "insurance", "audit", "records", "pricing", "support", "term",
          "payment", "signed")


@dataclass
class Doc:
    doc_id: str
    words: int
    raw: str
    text: str  # the raw text, whitespace normalized: what extract_text gives and what is embedded
    role: str = "healthy"  # healthy | flaky | down | dead
    workflow_id: str = ""
    status: str = ""  # COMPLETED, FAILED, ... (the Temporal status's name)
    history: WorkflowHistory | None = None
    result: object = None


def contract_docs(rng: random.Random, key: str, sizes: list[int]) -> list[Doc]:
    """One contract per size (in words), its reference (the document id) in its first words, its lines
    wrapped and page-broken as an uploaded PDF's text is."""
    docs = []
    for n, words in enumerate(sizes):
        doc_id = f"K{key}-{n:02d}{rng.choice('ABCDEFGH')}"
        body = f"Contract reference: {doc_id}.".split()
        while len(body) < words:
            body.append(rng.choice(FILLER))
        body = body[:words]
        lines = [" ".join(body[i:i + 10]) for i in range(0, len(body), 10)]
        raw = "\n".join(line + ("\n\f " if i % 4 == 3 else "  ") for i, line in enumerate(lines))
        docs.append(Doc(doc_id=doc_id, words=len(body), raw=raw, text=" ".join(raw.split())))
    return docs


def make_docs(rng: random.Random, key: str) -> list[Doc]:
    """The check's run: 44 to 56 contracts (one of 99 words, one of 100), 6-10 with the primary down,
    1-2 of those with both models down, 2-4 whose primary fails once."""
    count = rng.randint(44, 56)
    sizes = [rng.randint(30, 260) for _ in range(count)]
    sizes[rng.randrange(count)] = QC_MIN_WORDS - 1
    sizes[rng.choice([i for i in range(count) if sizes[i] != QC_MIN_WORDS - 1])] = QC_MIN_WORDS
    docs = contract_docs(rng, key, sizes)
    order = list(range(count))
    rng.shuffle(order)
    n_down, n_dead, n_flaky = rng.randint(6, 10), rng.randint(1, 2), rng.randint(2, 4)
    for i in order[:n_dead]:
        docs[i].role = "dead"
    for i in order[n_dead:n_down]:
        docs[i].role = "down"
    for i in order[n_down:n_down + n_flaky]:
        docs[i].role = "flaky"
    return docs


def of(docs: list[Doc], *roles: str) -> list[Doc]:
    return [d for d in docs if d.role in roles]


def embedding_rules(key: str, primary: str, docs: list[Doc], latency_ms: int = 0) -> list[dict]:
    """The course LLM's rules for this run only: the dead documents fail on every model (503), the down
    ones on the primary (503), each flaky one on the primary's first request (500); first match wins.
    With `latency_ms`, every embeddings request of the run's documents answers that much later."""
    def refs(chosen: list[Doc]) -> str:
        return r"Contract reference: (?:" + "|".join(re.escape(d.doc_id) for d in chosen) + r")\."

    late = {"latency_ms": latency_ms} if latency_ms else {}
    rules = []
    if of(docs, "dead"):
        rules.append({"name": f"lab11-{key}-dead", "endpoint": "embeddings", "match": refs(of(docs, "dead")),
                      "fail_always": True, "fail_status": 503, **late})
    if of(docs, "down"):
        rules.append({"name": f"lab11-{key}-down", "endpoint": "embeddings", "model": re.escape(primary),
                      "match": refs(of(docs, "down")), "fail_always": True, "fail_status": 503, **late})
    rules += [{"name": f"lab11-{key}-flaky-{d.doc_id}", "endpoint": "embeddings",
               "model": re.escape(primary), "match": refs([d]), "fail_first": 1, "fail_status": 500, **late}
              for d in of(docs, "flaky")]
    if latency_ms:  # the healthy answers (and the flaky ones' retries) come late too
        rules.append({"name": f"lab11-{key}-late", "endpoint": "embeddings", "match": refs(docs), **late})
    return rules


def doc_of(entry: LedgerEntry) -> str | None:
    found = DOC_REF.search(entry.prompt)
    return found.group(1) if found else None


def same_vector(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 for x, y in zip(a, b))


# --- the sweep -----------------------------------------------------------------------------------

def history_steps(history: WorkflowHistory) -> list[tuple[str, str, object, int, int | None]]:
    """(activity, outcome, its input, scheduled event id, closing event id) per scheduled activity."""
    from temporalio.converter import DataConverter

    converter = DataConverter.default.payload_converter
    found: dict[int, list] = {}
    for event in history.events:
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        if kind == "ACTIVITY_TASK_SCHEDULED":
            attrs = event.activity_task_scheduled_event_attributes
            try:
                value = converter.from_payloads(list(attrs.input.payloads))[0]
            except Exception:
                value = None
            found[event.event_id] = [attrs.activity_type.name, "pending", value, event.event_id, None]
        elif kind in ("ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT",
                      "ACTIVITY_TASK_CANCELED"):
            attrs = getattr(event, kind.lower() + "_event_attributes")
            step = found[attrs.scheduled_event_id]
            step[1], step[4] = kind.removeprefix("ACTIVITY_TASK_").lower(), event.event_id
    return [tuple(step) for step in found.values()]


def field_of(value, name: str):
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


class Sweep(WorkerScenario):
    lab = "11"

    def __init__(self, workdir: Path, subjects: int = 7, path: Path | None = None, latency_ms: int = 300,
                 start_gap_s: float = 0.6, kill_window: tuple[float, float] = (1.0, 4.0),
                 finish_timeout_s: float = 90.0):
        if subjects < 4:
            raise SystemExit("lab 11's sweep runs 4 or more documents (healthy, flaky, primary down, no model), "
                             f"not {subjects}")
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.start_gap_s, self.kill_window = latency_ms, start_gap_s, kill_window
        self.finish_timeout_s = finish_timeout_s
        self.run_id = uuid.uuid4().hex[:6]
        self.counts: Counter = Counter()  # across trials, for the report

    def tallies(self) -> dict[str, int]:
        return dict(self.counts)

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        from labkit.postgres import from_env

        self.target = graded_copy(self.lab, self.workdir, self.path)
        state = self.workdir / "services"
        self.temporal = TemporalServer(state, ui_port=None)
        self.llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
        self.postgres = from_env(state / "postgres")
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env()) \
            if prefork.enabled() else None
        for server in filter(None, (self.temporal, self.llm, self.postgres, self.forks)):
            server.launch()
        await asyncio.to_thread(self.temporal.wait_ready)
        await asyncio.to_thread(self.llm.wait_ready)
        await asyncio.to_thread(self.postgres.wait_ready)
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)
        self.services = Services(temporal_address=self.temporal.address, course_llm=self.llm,
                                 temporal=self.temporal)
        self.client = await Client.connect(self.temporal.address)

    async def stop(self) -> None:
        for server in filter(None, (getattr(self, name, None) for name in ("forks", "llm", "postgres", "temporal"))):
            server.stop()

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        key = f"{self.run_id}t{trial}"
        rng = random.Random(key)
        self.primary, self.fallback = f"embed-primary-{key}", f"embed-fallback-{key}"
        self.dimensions = rng.choice([16, 24, 32])
        self.docs = contract_docs(rng, key, [rng.randint(40, 180) for _ in range(self.subjects)])
        roles = ["dead", "flaky"] + ["down"] * max(1, self.subjects // 3)
        for doc, role in zip(rng.sample(self.docs, len(roles)), roles):
            doc.role = role
        self.db_name = f"lab11_sweep_{key}"
        self.db_url = await asyncio.to_thread(self.postgres.create_database, self.db_name)
        workdir = self.workdir / f"trial{trial}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.harness = ForkedWorkers(
            self.target, self.services, workdir, lab=self.lab, key=f"sweep-{key}", forks=self.forks,
            LAB11_DATABASE_URL=self.db_url, DATABASE_URL=self.db_url, LAB11_PRIMARY_MODEL=self.primary,
            LAB11_FALLBACK_MODEL=self.fallback, LAB11_EMBED_DIMENSIONS=str(self.dimensions))
        self.llm.push_rules(embedding_rules(key, self.primary, self.docs, self.latency_ms))
        self.plan = {f"lab11-sweep-{key}-{d.doc_id}": d for d in self.docs}
        for workflow_id, doc in self.plan.items():
            doc.workflow_id = workflow_id
        self.handles: dict[str, WorkflowHandle] = {}
        self.results: dict[str, object] = {}
        self.identities: set[str] = set()
        self.killed: Counter = Counter()  # (workflow id, activity id): attempts a kill interrupted
        self.gate, self.feed = gate, None
        self.harness.start_worker()

    async def _start_runs(self) -> None:
        await asyncio.to_thread(self._upload)
        for n, (workflow_id, doc) in enumerate(self.plan.items()):
            if n:
                await asyncio.sleep(self.start_gap_s)
            await self.gate.wait()
            self.handles[workflow_id] = await self.client.start_workflow(
                "IngestWorkflow", {"doc_id": doc.doc_id}, id=workflow_id, task_queue=self.harness.task_queue,
                task_timeout=WORKFLOW_TASK_TIMEOUT)

    def _upload(self) -> None:
        """The worker created the lab's tables before it polled: upload, as the upload form does."""
        with psycopg.connect(self.db_url, autocommit=True) as db:
            for doc in self.docs:
                db.execute("INSERT INTO documents (doc_id, title, raw) VALUES (%s, %s, %s)",
                           (doc.doc_id, f"Contract {doc.doc_id}", doc.raw))

    async def after_kill(self) -> None:
        for workflow_id, handle in list(self.handles.items()):
            for pending in (await handle.describe()).raw_description.pending_activities:
                if pending.state == STARTED:
                    self.killed[(workflow_id, pending.activity_id)] += 1
            await release_dead_worker(self.client, handle)

    async def recorded(self) -> set[str]:
        found = set()
        for workflow_id, handle in list(self.handles.items()):
            for name, outcome, value, _, _ in history_steps(await handle.fetch_history()):
                if name == "embed_document" and outcome == "completed":
                    found.add(f"{workflow_id}/embed:{field_of(value, 'model')}")
        return found

    async def finish(self) -> None:
        self.results = await results_of(self.handles, self.feed, self.finish_timeout_s)
        for workflow_id, doc in self.plan.items():
            handle = self.handles.get(workflow_id)
            if handle is None:
                continue
            with contextlib.suppress(Exception):
                doc.history = await handle.fetch_history()
                doc.status = WorkflowExecutionStatus((await handle.describe()).status).name
        with psycopg.connect(self.db_url, autocommit=True) as db:
            self.vectors = list(db.execute(
                "SELECT doc_id, model, embedding::float4[], stored_at FROM document_vectors"))
            self.notifications = list(db.execute("SELECT doc_id, status, sent_at FROM notifications"))
            self.events = list(db.execute("SELECT type, doc_id FROM events ORDER BY id"))

    def scheduled(self, doc: Doc) -> dict[str, tuple[str, int, object]]:
        """activity id: (activity type, its retry policy's maximum_attempts, its input) from the history."""
        from temporalio.converter import DataConverter

        converter = DataConverter.default.payload_converter
        found = {}
        for event in doc.history.events if doc.history is not None else []:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attrs = event.activity_task_scheduled_event_attributes
                try:
                    value = converter.from_payloads(list(attrs.input.payloads))[0]
                except Exception:
                    value = None
                found[attrs.activity_id] = (attrs.activity_type.name, attrs.retry_policy.maximum_attempts, value)
        return found

    def spent(self, doc: Doc) -> list[str]:
        """The activities of the run whose every attempt (3, the lab's policies) a kill interrupted."""
        return [name for activity_id, (name, most, _) in self.scheduled(doc).items()
                if most and self.killed[(doc.workflow_id, activity_id)] >= most]

    def primary_used_up_by_crashes(self, doc: Doc) -> bool:
        """The primary's embed_document ran out of attempts on kills and injected faults alone (a flaky
        document whose retries a kill took): falling back is then what the lab says to do."""
        faults = sum(1 for e in self.entries if doc_of(e) == doc.doc_id and e.model == self.primary and e.status != 200)
        return any(name == "embed_document" and field_of(value, "model") == self.primary and most
                   and self.killed[(doc.workflow_id, activity_id)] + faults >= most
                   for activity_id, (name, most, value) in self.scheduled(doc).items())

    # --- the ledger ------------------------------------------------------------------------------------

    async def logical_calls(self) -> list[LogicalCall]:
        entries = self.entries = [e for e in self.llm.ledger().entries(caller=self.harness.api_key)
                                  if e.endpoint == "embeddings"]
        ids = {d.doc_id for d in self.docs}
        self.strays = [e for e in entries if doc_of(e) not in ids or e.model not in (self.primary, self.fallback)]
        calls = []
        for workflow_id, doc in self.plan.items():
            mine = [e for e in entries if doc_of(e) == doc.doc_id]
            primary = LogicalCall(key=f"{workflow_id}/embed:{self.primary}", subject=workflow_id, successor=None,
                                  entries=[(e.at, e.status) for e in mine if e.model == self.primary])
            fallback = [(e.at, e.status) for e in mine if e.model == self.fallback]
            if doc.role in ("down", "dead") or fallback:
                primary.successor = f"{workflow_id}/embed:{self.fallback}"
                calls.append(LogicalCall(key=primary.successor, subject=workflow_id, successor=None, entries=fallback))
            calls.append(primary)
        # a run that failed because kills took every attempt of a stage before the embedding (its retry
        # policy did what it says) may never have asked a model: only the calls it made are audited
        cut_short = {d.workflow_id for d in self.docs if d.status == "FAILED" and self.spent(d)}
        return [call for call in calls if call.subject not in cut_short or call.entries]

    # --- the end state --------------------------------------------------------------------------------

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        vectors = Counter(row[0] for row in self.vectors)
        vector_of = {row[0]: row for row in self.vectors}
        sent = {(doc_id, status): at for doc_id, status, at in self.notifications}
        for workflow_id, doc in self.plan.items():
            def fail(invariant: str, observed: str, expected: str) -> None:
                found.append(Violation(trial, workflow_id, invariant, observed, expected))

            result = self.results.get(workflow_id, "never started")
            spent = self.spent(doc)
            if spent:
                self.counts[f"runs with every attempt of an activity killed ({spent[0]})"] += 1
            steps = history_steps(doc.history) if doc.history is not None else []
            fell_back = any(name == "embed_document" and field_of(value, "model") == self.fallback
                            for name, _, value, _, _ in steps)
            alerts = [t for t, d in self.events if d == doc.doc_id and t == "pipeline.alert"]
            if doc.role == "dead":
                if doc.status != "FAILED" or (doc.doc_id, "ready") in sent or doc.doc_id in vectors:
                    fail("a document no model can embed did not fail", f"workflow {doc.status or result!r}; "
                         f"notified {sorted(s for d, s in sent if d == doc.doc_id)}; stored {vectors[doc.doc_id]} row(s)",
                         "the workflow FAILED, nothing stored, the user not told 'ready'")
                elif (doc.doc_id, "failed") not in sent or not alerts:
                    fail("a failed document was not surfaced", f"alerts {len(alerts)}; notified "
                         f"{sorted(s for d, s in sent if d == doc.doc_id)}",
                         "a pipeline.alert event and a 'failed' notification")
                continue
            if doc.status != "COMPLETED":
                if spent and doc.status == "FAILED":
                    continue  # its retry policy did what it says: every attempt was a crash
                fail("workflow lost", f"{doc.status or 'no status'}: {str(result)[:160]}",
                     "IngestWorkflow COMPLETED (the document stored and its user told 'ready')")
                continue
            want = self.fallback if doc.role == "down" else self.primary
            crashed_over = doc.role in ("healthy", "flaky") and self.primary_used_up_by_crashes(doc)
            if crashed_over and fell_back:
                self.counts["primary's attempts used up by kills (and its one fault): fell back"] += 1
            stored = vector_of.get(doc.doc_id)
            if vectors[doc.doc_id] != 1:
                fail("not exactly one stored row for the document", f"{vectors[doc.doc_id]} row(s) in document_vectors",
                     "exactly one")
            elif stored[1] != want and not (crashed_over and stored[1] == self.fallback):
                fail("stored with the wrong model", f"model {stored[1]!r}", f"{want!r}")
            elif not same_vector(list(stored[2] or []), expected_vector(stored[1], doc.text, self.dimensions)):
                fail("the stored vector is not the model's for the document's text",
                     f"{len(stored[2] or [])} values from {stored[1]!r}", "the course LLM's vector for the text")
            if doc.role == "down" and not alerts:
                fail("a primary model failure was not surfaced", "no pipeline.alert event naming it", "one or more")
            if doc.role in ("healthy", "flaky") and fell_back and not crashed_over:
                fail("the fallback model ran for a document the primary could embed",
                     f"roles {doc.role}; history asks {self.fallback}", f"only {self.primary}")
            if (doc.doc_id, "ready") not in sent:
                fail("a stored document was never notified 'ready'", f"notifications "
                     f"{sorted(s for d, s in sent if d == doc.doc_id)}", "'ready'")
            else:
                notify = [s for s in steps if s[0] == "notify_user" and field_of(s[2], "status") == "ready"]
                stores = [s for s in steps if s[0] == "store_embedding" and s[1] == "completed"]
                if not notify or not stores or notify[0][3] < stores[0][4]:
                    fail("the user was told 'ready' before the vector was stored",
                         f"notify_user scheduled at event {notify[0][3] if notify else '-'}, store_embedding "
                         f"completed at event {stores[0][4] if stores else '-'}", "notify after the store completed")
                elif stored is not None and sent[(doc.doc_id, "ready")] < stored[3]:
                    fail("the user was told 'ready' before the vector was stored",
                         f"'ready' sent {sent[(doc.doc_id, 'ready')]:%H:%M:%S.%f}, vector stored {stored[3]:%H:%M:%S.%f}",
                         "the notification no older than the vector row")
            stage_events = [t for t, d in self.events if d == doc.doc_id and t in STAGE_EVENTS]
            if stage_events != list(STAGE_EVENTS):
                fail("stage events not published once each, in order", f"{stage_events}", f"{list(STAGE_EVENTS)}")
        strangers = sorted(set(vectors) - {d.doc_id for d in self.docs})
        if strangers:
            found.append(Violation(trial, "document_vectors", "rows for no document of the trial", f"{strangers}",
                                   "one row per stored document, nothing else"))
        if self.strays:
            found.append(Violation(trial, "course LLM", "embeddings requests for no document of the trial",
                                   f"{len(self.strays)} request(s), e.g. {self.strays[0].model} "
                                   f"{self.strays[0].prompt[:60]!r}",
                                   "every request names one of the trial's documents and one of its two models"))
        return found

    async def end_trial(self) -> None:
        if self.feed is not None and not self.feed.done():
            self.feed.cancel()
        for handle in self.handles.values():  # a run the sweep gave up on must not run on
            with contextlib.suppress(Exception):
                await handle.terminate("crash sweep trial over")
        self.harness.close()
        with contextlib.suppress(Exception):  # a server of DATABASE_URL's keeps no trial's database
            await asyncio.to_thread(self.postgres.drop_database, self.db_name)
