"""Lab 10's scenario: the LangGraph and Temporal batches survive their pods SIGKILLed at random moments.

Shared with the check (checks/test_lab10_capstone.py: one eviction per runtime, at a moment chosen by
holding one LLM answer): the modules the fork server preloads, the question tag the LLM ledger is read
by, drawing a batch with ids made for the run, the answer each question must get, the environment a
pod runs with on a host of its own, reading the answers table and the checkpoint threads, and the
Temporal clean-up after an eviction (release_dead_pod, terminate_open).
The sweep (`Sweep`, `lab sweep 10`) kills the pods at many seeded random moments and audits the same
invariants. The Restate pod is not swept yet (the check evicts it once); the naive loop is the
baseline that loses work by design.

Sweep, per trial, for each runtime of `runtimes` (LangGraph and Temporal by default): a fresh PostgreSQL
database (answers table and, for LangGraph, checkpoint tables made first, as a deploy step), a batch of
`subjects` questions drawn from labkit/corpus/capstone.toml with ids of its own, one LLM rule per
question answering with a reply made for the trial (`latency_ms` late, so a kill can catch a call in
flight), searches `search_ms` late, its own LLM key and web caller. Pod 1 of each is
`python -m <lab>.pod <runtime>` (forked from a warm interpreter, as the check does); the Temporal pod
gets its own task queue and continues as new every `questions_per_run` questions. A kill SIGKILLs
every live pod together (one crashed host); then, as the check does, the dead Temporal pod's running
activity attempts are failed and its sticky queue forgotten (what its timeouts would do later; the
attempt counts against the retry policy). The restart is pod N+1 of each killed runtime on a fresh
host (cwd, TMPDIR and HOME of its own), same database and Temporal server.

Logical LLM call: question q's summarize = the ledger entries tagged [lab10 q=<q>] (of its batch's
LLM key); its successor is the next question of the same batch. Recorded = q's reply is durably in
the store: in its published answer row; for LangGraph anywhere in the checkpoint tables (the
checkpoint's inline values, its blobs, a node's saved writes); for Temporal anywhere in the history
of any run of the task queue (continue-as-new included); found by the reply's unique marker,
whatever shape the student's state or workflows have.
Invariants verified at the end, per batch: the last pod exited 0; every question has exactly one
answer row whose summary is the LLM's reply to that question, whose sources are that question's
search results, approved; no LLM call without a question tag of its batch. The audit adds: no
answered question asked again, each summarize call made once except the calls a kill caught in
flight. A batch that makes more than 2N + (pods) LLM calls redoes work without end (a continue-as-new
that drops its cursor): the sweep stops waiting for it, and the audit names the repeats.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
import tomllib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from labkit import course, prefork, proc
from labkit.postgres import from_env
from labkit.services import CourseLLM, TemporalServer
from labkit.sweep import LogicalCall, Violation
from labkit.sweep_kit import graded_copy, last_exception

# What this sweep starts (the LangGraph and Temporal pods): it runs where restate-server is missing.
SERVICES = ["postgres", "llm", "web", "temporal"]

# Third-party modules the fork server imports once (never student code; labkit.prefork): the pods
# then start in a fraction of a second, so the restart time measures the runtime more than imports.
PRELOAD = ["openai", "httpx", "psycopg", "langgraph.graph", "langgraph.checkpoint.postgres",
           "temporalio.client", "temporalio.worker", "temporalio.workflow", "temporalio.activity",
           "temporalio.common", "temporalio.exceptions"]
Q_TAG = re.compile(r"\[lab10 q=([\w.-]+)\]")
CORPUS = Path(course.REPO) / "labkit" / "corpus" / "capstone.toml"


# --- shared by the check and the sweep -----------------------------------------------------------

def draw_batch(rng: random.Random, corpus: Path, run_tag: str, n: int) -> list[dict]:
    """n questions from the corpus, with ids made for this run: a program that knows the corpus's
    ids knows nothing about these."""
    pool = tomllib.loads(Path(corpus).read_text())["questions"]
    picked = rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]
    return [{"id": f"{run_tag}-{i + 1:03d}", "text": q["text"]} for i, q in enumerate(picked)]


def reply_for(nonce: str, question: dict) -> str:
    """The LLM's answer to one question, made for one run (the nonce), so it names its question."""
    return f"Answer {nonce}/{question['id']}: for '{question['text']}' the sources agree on the short version."


def question_rule(question: dict, reply: str, latency_ms: int) -> dict:
    """The course LLM's rule for one question: its tag, its reply, its latency."""
    return {"name": f"lab10-{question['id']}", "match": rf"\[lab10 q={re.escape(question['id'])}\]",
            "reply": reply, "latency_ms": latency_ms}


def pod_host(workdir: Path, n: int) -> Path:
    """Pod n's host: cwd, TMPDIR and HOME of its own, so nothing local survives an eviction."""
    host = Path(workdir) / f"host{n}"
    for sub in ("tmp", "home"):
        (host / sub).mkdir(parents=True, exist_ok=True)
    return host


def pod_env(target, host: Path, *, db_url: str, web_url: str, llm_url: str, caller: str, questions: Path,
            batch_id: str, questions_per_run: int, temporal_address: str = "", task_queue: str = "") -> dict:
    """What a pod is given (pod.py's environment), as student code on `host`."""
    return target.python_env(
        DATABASE_URL=db_url, COURSE_WEB_URL=web_url, OPENAI_BASE_URL=llm_url, OPENAI_API_KEY=caller,
        LAB10_QUESTIONS=str(questions), LAB10_BATCH_ID=batch_id, LAB10_QUESTIONS_PER_RUN=str(questions_per_run),
        TEMPORAL_ADDRESS=temporal_address, TEMPORAL_TASK_QUEUE=task_queue,
        TMPDIR=str(host / "tmp"), HOME=str(host / "home"))


def create_answers_table(target, db_url: str) -> None:
    """The deploy step: the answers table, as the course's steps.py defines it."""
    import psycopg
    from importlib import import_module

    with psycopg.connect(db_url, autocommit=True) as conn:
        sys.path.insert(0, str(target.root))
        try:
            conn.execute(import_module(target.module("steps")).ANSWERS_TABLE)
        finally:
            sys.path.remove(str(target.root))


def answer_rows(db_url: str, batch_id: str) -> dict[str, dict]:
    import psycopg

    with psycopg.connect(db_url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("SELECT question_id, summary, sources, status, publications, "
                            "extract(epoch from answered_at) FROM lab10_answers WHERE batch_id = %s",
                            (batch_id,)).fetchall()
    return {r[0]: {"summary": r[1], "sources": r[2], "status": r[3], "publications": r[4], "at": float(r[5])}
            for r in rows}


def checkpoint_threads(db_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(db_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT to_regclass('public.checkpoints') IS NOT NULL").fetchone()[0]
        if not exists:
            return set()
        return {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints").fetchall()}


def llm_calls(ledger, caller: str) -> list[tuple[str, object]]:
    """Every LLM call of one caller, with the question id its prompt is tagged with ("?" for none)."""
    found = []
    for entry in ledger.entries(caller=caller):
        match = Q_TAG.search(entry.prompt)
        found.append((match.group(1) if match else "?", entry))
    return found


def checkpointed_text(db_url: str) -> bytes:
    """Everything the checkpoint tables hold (inline values, blobs, saved node writes), as bytes to
    search: a reply found there is durable whatever the student's state looks like."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True, connect_timeout=10) as conn:
        if not conn.execute("SELECT to_regclass('public.checkpoints') IS NOT NULL").fetchone()[0]:
            return b""
        parts = [r[0].encode() for r in conn.execute("SELECT checkpoint::text FROM checkpoints").fetchall()]
        for table in ("checkpoint_blobs", "checkpoint_writes"):
            parts += [bytes(r[0]) for r in conn.execute(f"SELECT blob FROM {table} WHERE blob IS NOT NULL").fetchall()]
    return b"\n".join(parts)


# --- Temporal (shared by the check and the sweep) ----------------------------------------------

async def with_temporal_client(address: str, fn):
    from temporalio.client import Client

    client = await Client.connect(address)
    return await fn(client)


def release_dead_pod(address: str, task_queue: str, cut_off: list[dict]) -> int:
    """Do at once what the server would do when the dead pod's timeouts expire: fail its running
    activity attempts (the retry policy applies, as for a timeout) and forget its sticky queue.
    `cut_off`: the attempts the ledger shows in flight (their X-Lab-Origin names workflow, run and
    activity), released first: a run that continued-as-new a moment ago may not be listed yet."""
    from temporalio.api.enums.v1 import PendingActivityState
    from temporalio.exceptions import ApplicationError
    from temporalio.service import RPCError

    from labkit import temporal

    async def fail(client, workflow_id: str, run_id: str | None, activity_id: str) -> int:
        try:
            await client.get_async_activity_handle(workflow_id=workflow_id, run_id=run_id, activity_id=activity_id
                                                   ).fail(ApplicationError("the pod running this attempt was evicted (SIGKILL)"))
            return 1
        except RPCError:  # completed or already failed: nothing to release
            return 0

    async def release(client) -> int:
        failed = 0
        for attempt in cut_off:
            failed += await fail(client, attempt["workflow_id"], attempt.get("run_id"), attempt["id"])
            try:
                await temporal.forget_sticky_queue(client, attempt["workflow_id"])
            except RPCError:
                pass
        async for execution in client.list_workflows(f'TaskQueue="{task_queue}" AND ExecutionStatus="Running"'):
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
            description = await handle.describe()
            for activity in description.raw_description.pending_activities:
                if activity.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                    failed += await fail(client, execution.id, execution.run_id, activity.activity_id)
            try:
                await temporal.forget_sticky_queue(client, execution.id)
            except RPCError:
                pass
        return failed

    return asyncio.run(with_temporal_client(address, release))


def terminate_open(address: str, task_queue: str) -> None:
    async def terminate(client):
        async for execution in client.list_workflows(f'TaskQueue="{task_queue}" AND ExecutionStatus="Running"'):
            try:
                await client.get_workflow_handle(execution.id).terminate("the check is over")
            except Exception:
                pass

    try:
        asyncio.run(with_temporal_client(address, terminate))
    except Exception:
        pass


# --- the sweep -----------------------------------------------------------------------------------

RUNTIMES = ("langgraph", "temporal")  # the runtimes a trial runs side by side (Restate: not swept yet)
SHORT = {"langgraph": "lg", "temporal": "tp"}


@dataclass
class Batch:
    """One runtime's batch in a trial: its questions, replies, LLM key and web caller, its pods."""
    runtime: str
    batch_id: str
    caller: str
    task_queue: str
    questions: list[dict]
    replies: dict[str, str]
    markers: dict[str, bytes]
    workdir: Path
    db_url: str
    pods: list = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [q["id"] for q in self.questions]


class Sweep:
    lab = "10"

    # latency_ms: each answer's floor. 8 questions x 0.6 s = 4.8 s of answering per batch, longer than the
    # quick test's three kill delays together (seed 2026: 4.4 s), so however fast the machine, a pod is
    # still at work when the last kill comes (a kill that finds every pod finished has nothing to test).
    def __init__(self, workdir: Path, subjects: int = 8, path: Path | None = None, latency_ms: int = 600,
                 search_ms: int = 20, kill_window: tuple[float, float] = (0.5, 4.5),
                 finish_timeout_s: float = 180.0,  # a hang guard: a correct batch ends in seconds
                 runtimes: tuple[str, ...] = RUNTIMES, questions_per_run: int = 3):
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.search_ms, self.kill_window = latency_ms, search_ms, kill_window
        self.finish_timeout_s = finish_timeout_s
        unknown = set(runtimes) - set(RUNTIMES)
        if unknown or not runtimes:
            raise ValueError(f"runtimes: some of {RUNTIMES}, not {tuple(runtimes)}")
        self.runtimes, self.questions_per_run = tuple(runtimes), questions_per_run
        self.run_id = uuid.uuid4().hex[:5]
        self.counts: Counter = Counter()
        self.temporal = self.client = None

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        from labkit.web import CourseWeb

        self.target = graded_copy(self.lab, self.workdir, self.path)
        state = self.workdir / "services"
        self.postgres = from_env(state / "pg")
        self.llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
        self.web = CourseWeb(state / "web-server")
        if "temporal" in self.runtimes:
            self.temporal = TemporalServer(state / "temporal", ui_port=None)
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env()) \
            if prefork.enabled() else None
        for server in filter(None, (self.forks, self.postgres, self.llm, self.web, self.temporal)):
            server.launch()
        await asyncio.to_thread(self.llm.wait_ready)
        await asyncio.to_thread(self.web.wait_ready)
        await asyncio.to_thread(self.postgres.wait_ready)
        if self.temporal is not None:
            from temporalio.client import Client

            await asyncio.to_thread(self.temporal.wait_ready)
            self.client = await Client.connect(self.temporal.address)
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)

    async def stop(self) -> None:
        for name in ("forks", "web", "llm", "temporal", "postgres"):
            server = getattr(self, name, None)
            if server is not None:
                server.stop()

    # --- one trial: the batches of every runtime, their pods on one host ----------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        self.trial_dir = self.workdir / f"trial{trial}"
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.batches: list[Batch] = []
        for runtime in self.runtimes:
            tag = f"{SHORT[runtime]}{self.run_id}t{trial}"
            questions = draw_batch(random.Random(tag), CORPUS, tag, self.subjects)
            nonce = uuid.uuid4().hex[:8]
            batch = Batch(runtime=runtime, batch_id=f"batch-{tag}", caller=f"lab-lab10-{tag}", task_queue=f"lab10-{tag}",
                          questions=questions, replies={q["id"]: reply_for(nonce, q) for q in questions},
                          markers={q["id"]: f"{nonce}/{q['id']}".encode() for q in questions},
                          workdir=self.trial_dir / runtime, db_url=self.postgres.create_database(f"sweep10_{tag}"))
            await asyncio.to_thread(self._deploy, batch)
            batch.workdir.mkdir(parents=True, exist_ok=True)
            (batch.workdir / "questions.json").write_text(json.dumps(questions))
            self.llm.push_rules([question_rule(q, batch.replies[q["id"]], self.latency_ms) for q in questions])
            self.web.set_behaviour("_search", caller=batch.caller, slow_ms=self.search_ms)
            self.batches.append(batch)
        self.epoch_start = time.time()
        for batch in self.batches:
            self._spawn(batch)

    def _deploy(self, batch: Batch) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver

        create_answers_table(self.target, batch.db_url)
        if batch.runtime == "langgraph":
            with PostgresSaver.from_conn_string(batch.db_url) as saver:
                saver.setup()

    def _spawn(self, batch: Batch) -> None:
        n = len(batch.pods) + 1
        host = pod_host(batch.workdir, n)
        temporal = batch.runtime == "temporal"
        env = pod_env(self.target, host, db_url=batch.db_url, web_url=self.web.url_for(batch.caller),
                      llm_url=self.llm.base_url, caller=batch.caller, questions=batch.workdir / "questions.json",
                      batch_id=batch.batch_id,
                      # Temporal: continue-as-new every few questions, so kills land around it too
                      questions_per_run=self.questions_per_run if temporal else len(batch.questions),
                      temporal_address=self.temporal.address if temporal else "",
                      task_queue=batch.task_queue if temporal else "")
        module, log_path, name = self.target.module("pod"), batch.workdir / f"pod{n}.log", f"{batch.runtime}-pod{n}"
        if self.forks is not None:
            pod = self.forks.start(module, [batch.runtime], name=name, log_path=log_path, env=env, cwd=host)
        else:
            pod = proc.start([sys.executable, "-m", module, batch.runtime], name=name, log_path=log_path, env=env,
                             cwd=host, student=True)
        batch.pods.append(pod)

    async def wait_ready(self) -> None:
        return None  # a pod works from its first instruction: any moment is a moment

    def processes(self) -> list:
        return [batch.pods[-1] for batch in self.batches]  # one host crashes: every pod on it dies together

    def _calls(self, batch: Batch) -> list[tuple[str, object]]:
        return llm_calls(self.llm.ledger(), batch.caller)

    @staticmethod
    def _killed(pod) -> bool:
        return pod.killed_with is not None and pod.returncode == -9  # the sweep's kill, not a failure

    async def landings(self) -> list[str]:
        found = []
        for batch in self.batches:
            if not self._killed(batch.pods[-1]):
                found.append(f"{batch.runtime}: pod had already exited")
                continue
            rows = answer_rows(batch.db_url, batch.batch_id)
            if len(rows) == len(batch.ids):
                found.append(f"{batch.runtime}: every answer published, before the pod exited")
                continue
            current = next(qid for qid in batch.ids if qid not in rows)
            if batch.runtime == "temporal":  # where the frozen workflow stood, as the server says
                where = " / ".join(sorted(await self._workflow_landings(batch))) or "no workflow running yet"
            else:
                asked = any(qid == current and e.at >= self.epoch_start for qid, e in self._calls(batch))
                where = "LLM call in flight" if asked else "before its LLM call (search, checkpoint or start)"
            found.append(f"{batch.runtime}: question {batch.ids.index(current) + 1}/{len(batch.ids)}: {where}")
        return found

    async def _workflow_landings(self, batch: Batch) -> list[str]:
        from labkit.sweep_temporal import landing

        query = f'TaskQueue="{batch.task_queue}" AND ExecutionStatus="Running"'
        return [await landing(self.client.get_workflow_handle(execution.id, run_id=execution.run_id))
                async for execution in self.client.list_workflows(query)]

    async def after_kill(self) -> None:
        # PostgreSQL rolls back a dead client's open transaction by itself. Temporal waits out the dead
        # pod's timeouts: do at once what it would do then (the check's release_dead_pod).
        for batch in self.batches:
            if batch.runtime != "temporal" or not self._killed(batch.pods[-1]):
                continue
            cut_off = [((e.origin or {}).get("activity") or {}) for _, e in self._calls(batch) if e.at >= self.epoch_start]
            failed = await asyncio.to_thread(release_dead_pod, self.temporal.address, batch.task_queue,
                                             [a for a in cut_off if a.get("workflow_id") and a.get("id")])
            self.counts["Temporal activity attempts of a dead pod failed at once"] += failed

    async def _history_bytes(self, batch: Batch) -> bytes:
        """Every event of every run of the batch's task queue (continue-as-new included), as bytes to
        search: payloads are stored as the SDK encoded them, so a reply in a result is found as is."""
        parts = []
        async for execution in self.client.list_workflows(f'TaskQueue="{batch.task_queue}"'):
            history = await self.client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            parts += [event.SerializeToString() for event in history.events]
        return b"\n".join(parts)

    async def recorded(self) -> set[str]:
        found = set()
        for batch in self.batches:
            rows = answer_rows(batch.db_url, batch.batch_id)
            stored = checkpointed_text(batch.db_url) if batch.runtime == "langgraph" else \
                await self._history_bytes(batch)
            found |= {qid for qid in batch.ids
                      if batch.replies[qid] == (rows.get(qid) or {}).get("summary") or batch.markers[qid] in stored}
        return found

    async def restart(self) -> None:
        self.epoch_start = time.time()
        for batch in self.batches:
            if self._killed(batch.pods[-1]):
                self._spawn(batch)

    def _runaway(self, batch: Batch) -> bool:
        """More LLM calls than every question once plus one per pod: the batch redoes work without end
        (e.g. a continue-as-new that drops its cursor); stop waiting, verify() and the audit say so."""
        return len(self._calls(batch)) > 2 * len(batch.ids) + len(batch.pods)

    async def finish(self) -> None:
        deadline = time.monotonic() + self.finish_timeout_s
        while time.monotonic() < deadline:
            running = [b for b in self.batches if b.pods[-1].alive and not self._runaway(b)]
            if not running:
                break
            await asyncio.sleep(0.05)

    async def logical_calls(self) -> list[LogicalCall]:
        found = []
        self.strays = []
        for batch in self.batches:
            calls = self._calls(batch)
            ids = batch.ids
            self.strays += [(batch, e) for qid, e in calls if qid not in ids]
            found += [LogicalCall(key=qid, subject=batch.batch_id,
                                  successor=ids[n + 1] if n + 1 < len(ids) else None,
                                  entries=[(e.at, e.status) for q, e in calls if q == qid])
                      for n, qid in enumerate(ids)]
        return found

    def tallies(self) -> dict[str, int]:
        return dict(self.counts)

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        for batch in self.batches:
            found += self._verify_batch(trial, batch)
        for batch, entry in self.strays[:1]:
            found.append(Violation(trial, "course LLM", "LLM calls for no question of the batch",
                                   f"{len(self.strays)} request(s), e.g. {entry.prompt[:80]!r} ({batch.runtime})",
                                   "every request tagged [lab10 q=<id>] with an id of its batch"))
        return found

    def _verify_batch(self, trial: int, batch: Batch) -> list[Violation]:
        found = []
        last = batch.pods[-1]
        if last.alive or last.returncode != 0:
            if last.alive and self._runaway(batch):
                state = (f"still running, stopped by the sweep after {len(self._calls(batch))} LLM calls for "
                         f"{len(batch.ids)} questions")
            elif last.alive:
                state = f"still running after {self.finish_timeout_s:.0f} s"
            else:
                state = f"exit status {last.returncode}: {last_exception(last.output())}"
            found.append(Violation(trial, batch.batch_id, f"{batch.runtime} batch not finished",
                                   f"the last {batch.runtime} pod: {state}",
                                   "the last pod exits 0 once every question is answered"))
        rows = answer_rows(batch.db_url, batch.batch_id)
        searches: dict[str, list] = {}
        by_text = {q["text"]: q["id"] for q in batch.questions}
        for entry in self.web.ledger().entries(caller=batch.caller, kind="search"):
            qid = by_text.get(entry.query)
            if qid:
                searches.setdefault(qid, []).append([url.rsplit("/", 1)[-1] for url in entry.results or []])
        self.counts[f"{batch.runtime} searches repeated after a kill"] += sum(len(s) - 1 for s in searches.values())
        missing = [qid for qid in batch.ids if qid not in rows]
        if missing:
            found.append(Violation(trial, batch.batch_id, f"{batch.runtime} questions lost",
                                   f"{len(missing)} of {len(batch.ids)} without an answer ({', '.join(missing[:3])})",
                                   "every question answered"))
        for qid, row in rows.items():
            if qid not in batch.replies:
                found.append(Violation(trial, qid, "an answer for no question of the batch", repr(qid),
                                       f"question ids {batch.ids[0]} .. {batch.ids[-1]}"))
                continue
            if row["summary"] != batch.replies[qid]:
                found.append(Violation(trial, qid, "wrong answer", f"{row['summary'][:100]!r}",
                                       f"the LLM's reply to {qid}: {batch.replies[qid][:100]!r}"))
            slugs = [url.rsplit("/", 1)[-1] for url in row["sources"]]
            if slugs not in searches.get(qid, []):
                found.append(Violation(trial, qid, "sources not from this question's search", f"{slugs}",
                                       f"one of its searches' results: {searches.get(qid, [])[:2]}"))
            if row["status"] != "approved":
                found.append(Violation(trial, qid, "not approved", repr(row["status"]), "'approved'"))
        return found

    async def end_trial(self) -> None:
        for batch in self.batches:
            for pod in batch.pods:
                pod.stop()
            if batch.runtime == "temporal":
                await asyncio.to_thread(terminate_open, self.temporal.address, batch.task_queue)
