"""Lab 10's scenario: the LangGraph batch survives its pod SIGKILLed at random moments.

Shared with the check (checks/test_lab10_capstone.py: one eviction per runtime, at a moment chosen by
holding one LLM answer): the modules the fork server preloads, the question tag the LLM ledger is read
by, drawing a batch with ids made for the run, the answer each question must get, the environment a
pod runs with on a host of its own, and reading the answers table and the checkpoint threads.
The sweep (`Sweep`, `lab sweep 10`) kills the LangGraph pod at many seeded random moments and
audits the same invariants. The Temporal and Restate pods are not swept yet (the check evicts each
once); the naive loop is the baseline that loses work by design.

Sweep, per trial: a fresh PostgreSQL database (answers table and checkpoint tables made first, as a
deploy step), a batch of `subjects` questions drawn from labkit/corpus/capstone.toml with ids of this
trial, one LLM rule per question answering with a reply made for the trial (`latency_ms` late, so a
kill can catch a call in flight), searches `search_ms` late. Pod 1 is
`python -m <lab>.pod langgraph` (forked from a warm interpreter, as the check does). A kill SIGKILLs
the pod; the restart is pod N+1 on a fresh host (cwd, TMPDIR and HOME of its own), same database.

Logical LLM call: question q's summarize = the ledger entries tagged [lab10 q=<q>]; its successor is
the next question's. Recorded = q's reply is durably in the store: in its published answer row, or
anywhere in the checkpoint tables (the checkpoint's inline values, its blobs, a node's saved writes),
found by the reply's unique marker, whatever shape the student's state has.
Invariants verified at the end: the last pod exited 0; every question has exactly one answer row
whose summary is the LLM's reply to that question, whose sources are that question's search results,
approved; no LLM call without a question tag of this batch. The audit adds: no answered question
asked again, each summarize call made once except the calls a kill caught in flight.
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
from pathlib import Path

from labkit import course, prefork, proc
from labkit.postgres import from_env
from labkit.services import CourseLLM
from labkit.sweep import LogicalCall, Violation
from labkit.sweep_kit import graded_copy, last_exception

# What this sweep starts (the LangGraph pod only): it runs where restate-server is missing.
SERVICES = ["postgres", "llm", "web"]

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


# --- the sweep -----------------------------------------------------------------------------------

class Sweep:
    lab = "10"

    def __init__(self, workdir: Path, subjects: int = 8, path: Path | None = None, latency_ms: int = 200,
                 search_ms: int = 20, kill_window: tuple[float, float] = (0.4, 2.0),
                 finish_timeout_s: float = 180.0):  # a hang guard: a correct batch ends in seconds
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.search_ms, self.kill_window = latency_ms, search_ms, kill_window
        self.finish_timeout_s = finish_timeout_s
        self.run_id = uuid.uuid4().hex[:5]
        self.counts: Counter = Counter()

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        from labkit.web import CourseWeb

        self.target = graded_copy(self.lab, self.workdir, self.path)
        state = self.workdir / "services"
        self.postgres = from_env(state / "pg")
        self.llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
        self.web = CourseWeb(state / "web-server")
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env()) \
            if prefork.enabled() else None
        for server in filter(None, (self.forks, self.postgres, self.llm, self.web)):
            server.launch()
        await asyncio.to_thread(self.llm.wait_ready)
        await asyncio.to_thread(self.web.wait_ready)
        await asyncio.to_thread(self.postgres.wait_ready)
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)

    async def stop(self) -> None:
        for name in ("forks", "web", "llm", "postgres"):
            server = getattr(self, name, None)
            if server is not None:
                server.stop()

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        tag = f"lg{self.run_id}t{trial}"
        self.trial_dir = self.workdir / f"trial{trial}"
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.batch_id, self.caller = f"batch-{tag}", f"lab-lab10-{tag}"
        self.questions = draw_batch(random.Random(tag), CORPUS, tag, self.subjects)
        self.ids = [q["id"] for q in self.questions]
        self.db_url = self.postgres.create_database(f"sweep10_{tag}")
        await asyncio.to_thread(self._deploy)
        (self.trial_dir / "questions.json").write_text(json.dumps(self.questions))
        nonce = uuid.uuid4().hex[:8]
        self.markers = {q["id"]: f"{nonce}/{q['id']}".encode() for q in self.questions}
        self.replies = {q["id"]: reply_for(nonce, q) for q in self.questions}
        self.llm.push_rules([question_rule(q, self.replies[q["id"]], self.latency_ms) for q in self.questions])
        self.web.set_behaviour("_search", caller=self.caller, slow_ms=self.search_ms)
        self.pods: list = []
        self.epoch_start = time.time()
        self._spawn()

    def _deploy(self) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver

        create_answers_table(self.target, self.db_url)
        with PostgresSaver.from_conn_string(self.db_url) as saver:
            saver.setup()

    def _spawn(self) -> None:
        n = len(self.pods) + 1
        host = pod_host(self.trial_dir, n)
        env = pod_env(self.target, host, db_url=self.db_url, web_url=self.web.url_for(self.caller),
                      llm_url=self.llm.base_url, caller=self.caller, questions=self.trial_dir / "questions.json",
                      batch_id=self.batch_id, questions_per_run=len(self.questions))
        module, log_path = self.target.module("pod"), self.trial_dir / f"pod{n}.log"
        if self.forks is not None:
            pod = self.forks.start(module, ["langgraph"], name=f"langgraph-pod{n}", log_path=log_path, env=env,
                                   cwd=host)
        else:
            pod = proc.start([sys.executable, "-m", module, "langgraph"], name=f"langgraph-pod{n}",
                             log_path=log_path, env=env, cwd=host, student=True)
        self.pods.append(pod)

    async def wait_ready(self) -> None:
        return None  # a pod works from its first instruction: any moment is a moment

    def processes(self) -> list:
        return self.pods[-1:]

    def _calls(self) -> list[tuple[str, object]]:
        return llm_calls(self.llm.ledger(), self.caller)

    async def landings(self) -> list[str]:
        pod = self.pods[-1]
        if pod.returncode != -9 or pod.killed_with is None:
            return ["pod had already exited"]
        rows = answer_rows(self.db_url, self.batch_id)
        if len(rows) == len(self.ids):
            return ["every answer published, before the pod exited"]
        current = next(qid for qid in self.ids if qid not in rows)
        asked = any(qid == current and e.at >= self.epoch_start for qid, e in self._calls())
        where = "LLM call in flight" if asked else "before its LLM call (search, checkpoint or start)"
        return [f"question {self.ids.index(current) + 1}/{len(self.ids)}: {where}"]

    async def after_kill(self) -> None:
        return None  # PostgreSQL rolls back a dead client's open transaction by itself

    async def recorded(self) -> set[str]:
        rows = answer_rows(self.db_url, self.batch_id)
        stored = checkpointed_text(self.db_url)
        return {qid for qid in self.ids
                if self.replies[qid] == (rows.get(qid) or {}).get("summary") or self.markers[qid] in stored}

    async def restart(self) -> None:
        self.epoch_start = time.time()
        last = self.pods[-1]
        if last.killed_with is not None and last.returncode == -9:  # the sweep's kill, not a failure
            self._spawn()

    async def finish(self) -> None:
        deadline = time.monotonic() + self.finish_timeout_s
        while self.pods[-1].alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def logical_calls(self) -> list[LogicalCall]:
        calls = self._calls()
        self.strays = [e for qid, e in calls if qid not in self.ids]
        return [LogicalCall(key=qid, subject=self.batch_id,
                            successor=self.ids[n + 1] if n + 1 < len(self.ids) else None,
                            entries=[(e.at, e.status) for q, e in calls if q == qid])
                for n, qid in enumerate(self.ids)]

    def tallies(self) -> dict[str, int]:
        return dict(self.counts)

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        last = self.pods[-1]
        if last.alive or last.returncode != 0:
            state = (f"still running after {self.finish_timeout_s:.0f} s" if last.alive else
                     f"exit status {last.returncode}: {last_exception(last.output())}")
            found.append(Violation(trial, self.batch_id, "batch not finished", f"the last pod: {state}",
                                   "the last pod exits 0 once every question is answered"))
        rows = answer_rows(self.db_url, self.batch_id)
        searches: dict[str, list] = {}
        by_text = {q["text"]: q["id"] for q in self.questions}
        for entry in self.web.ledger().entries(caller=self.caller, kind="search"):
            qid = by_text.get(entry.query)
            if qid:
                searches.setdefault(qid, []).append([url.rsplit("/", 1)[-1] for url in entry.results or []])
        self.counts["searches repeated after a kill"] += sum(len(s) - 1 for s in searches.values())
        missing = [qid for qid in self.ids if qid not in rows]
        if missing:
            found.append(Violation(trial, self.batch_id, "questions lost",
                                   f"{len(missing)} of {len(self.ids)} without an answer ({', '.join(missing[:3])})",
                                   "every question answered"))
        for qid, row in rows.items():
            if qid not in self.replies:
                found.append(Violation(trial, qid, "an answer for no question of the batch", repr(qid),
                                       f"question ids {self.ids[0]} .. {self.ids[-1]}"))
                continue
            if row["summary"] != self.replies[qid]:
                found.append(Violation(trial, qid, "wrong answer", f"{row['summary'][:100]!r}",
                                       f"the LLM's reply to {qid}: {self.replies[qid][:100]!r}"))
            slugs = [url.rsplit("/", 1)[-1] for url in row["sources"]]
            if slugs not in searches.get(qid, []):
                found.append(Violation(trial, qid, "sources not from this question's search", f"{slugs}",
                                       f"one of its searches' results: {searches.get(qid, [])[:2]}"))
            if row["status"] != "approved":
                found.append(Violation(trial, qid, "not approved", repr(row["status"]), "'approved'"))
        if self.strays:
            found.append(Violation(trial, "course LLM", "LLM calls for no question of the batch",
                                   f"{len(self.strays)} request(s), e.g. {self.strays[0].prompt[:80]!r}",
                                   "every request tagged [lab10 q=<id>] with an id of this batch"))
        return found

    async def end_trial(self) -> None:
        for pod in self.pods:
            pod.stop()
