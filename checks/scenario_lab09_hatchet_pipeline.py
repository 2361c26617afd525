"""Lab 09's crash sweep: task attempts SIGKILLed at random moments lose only the task they were running.

What a random kill means here. Lab 09 runs on hatchet-sdk's mock_run with the course as the engine
(checks/test_lab09_hatchet_pipeline.py): each task attempt is a process of its own, and the engine (in
the sweep's process, as a Hatchet engine keeps them in PostgreSQL) records each task's output once the
attempt returns. A kill is a worker dying mid-task: the sweep SIGKILLs the attempt running at that
moment. The engine then does what Hatchet does with a task whose worker is gone: it runs the task
again, with the same input and parents' outputs (reassigned: a kill does not spend one of the task's
retries). Nothing the engine recorded is redone.

Per trial: `subjects` documents (drawn replies from the course LLM, answered `latency_ms` late so a
kill can land while a call is in flight), one after another (their stores share one SQLite file),
each through the DAG the workflow declares. Logical LLM call: task T of document D = the ledger
entries tagged `[lab09 task=T doc=D]` (extract, then classify: its successor); recorded = the engine
holds T's output for D. Invariants verified at the end: every document finished; exactly one row per
document id, holding extract's facts and classify's label (store killed after its commit runs again:
it must find the row); every LLM request sent by an attempt of the task its tag names.

The same pieces run `lab check 09`'s engine; the check keeps its faults (429s, an exhausted retry)
and its messages.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from labkit import course, prefork, proc
from labkit.services import CourseLLM
from labkit.sweep import LogicalCall, Violation
from labkit.sweep_kit import graded_copy, last_exception

PRELOAD = ["hatchet_sdk", "openai", "sqlmodel", "pydantic", "google.protobuf.json_format"]
LLM_TASKS = ("extract", "classify")
TAG = re.compile(r"\[lab09 task=([\w-]+) doc=([\w-]+)\]")
LABELS = ("invoice", "contract", "complaint", "report", "receipt", "memo")
WORDS = ("amount", "due", "signed", "delivered", "refund", "quarterly", "penalty", "supplier", "tenant", "overdue")


def start_module(target, forks: prefork.ForkServer | None, module: str, args: list[str], *, name: str,
                 log_path: Path, env: dict[str, str], cwd: Path):
    """`python -m <lab>.<module> ARGS`, forked from the warm interpreter when one runs, else a plain exec:
    student code, confined either way (labkit.limits)."""
    if forks is not None:
        return forks.start(target.module(module), args, name=name, log_path=log_path, env=env, cwd=cwd)
    return proc.start([sys.executable, "-m", target.module(module), *args], name=name, log_path=log_path, env=env,
                      cwd=cwd, student=True)


def in_parents_order(tasks: dict) -> list[str]:
    order: list[str] = []
    while len(order) < len(tasks):
        ready = [t for t in tasks if t not in order and all(p in order for p in tasks[t].get("parents", []))]
        if not ready:
            raise RuntimeError(f"the tasks' parents form a cycle: {tasks}")
        order += ready
    return order


@dataclass
class Document:
    doc_id: str
    title: str
    body: str
    facts: str
    label: str
    outputs: dict = field(default_factory=dict)  # what the engine recorded, task -> output
    attempts: list = field(default_factory=list)  # (task, retry_count, process)
    failed: str | None = None

    def input(self) -> dict:
        return {"doc_id": self.doc_id, "provider": "openai", "title": self.title, "body": self.body}


class Sweep:
    lab = "09"

    def __init__(self, workdir: Path, subjects: int = 4, path: Path | None = None, latency_ms: int = 250,
                 kill_window: tuple[float, float] = (0.5, 5.0), finish_timeout_s: float = 180.0):
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.kill_window, self.finish_timeout_s = latency_ms, kill_window, finish_timeout_s
        self.run_id = uuid.uuid4().hex[:6]
        self.reassigned = 0

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        self.target = graded_copy(self.lab, self.workdir, self.path)
        self.llm = CourseLLM(self.workdir / "services", rules_files=[course.COURSE_TOML])
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env()) \
            if prefork.enabled() else None
        self.llm.launch()
        if self.forks is not None:
            self.forks.launch()
        await asyncio.to_thread(self.llm.wait_ready)
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)
        self.tasks = await self._registration()
        self.order = in_parents_order(self.tasks)

    async def _registration(self) -> dict:
        """The tasks as a worker would register them (describe.py): parents, retries."""
        log_path = self.workdir / "describe.log"
        env = self.target.python_env(OPENAI_API_KEY="lab-sweep09", LAB_SERVER_URL="")
        env.pop("HATCHET_CLIENT_TOKEN", None)
        process = start_module(self.target, self.forks, "describe", [], name="describe", log_path=log_path, env=env,
                               cwd=self.workdir)
        while process.alive:
            await asyncio.sleep(0.05)
        process.stop()
        log = process.output()
        match = re.search(r"^\{.*^\}", log, re.S | re.M)
        if process.returncode != 0 or not match:
            from labkit.feedback import CheckFailed

            raise CheckFailed(f"the workflow could not be loaded: {last_exception(log)}",
                              expected="workflow.py imports and defines `pipeline`; `lab check 09` says more")
        return {t.get("readable_id"): t for t in json.loads(match.group(0)).get("tasks", [])}

    async def stop(self) -> None:
        for server in filter(None, (getattr(self, "forks", None), getattr(self, "llm", None))):
            server.stop()

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        rng = random.Random()
        self.key = f"lab-sweep09-{self.run_id}-t{trial}"
        self.trial_dir = self.workdir / f"trial{trial}"
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.database = self.trial_dir / "pipeline.sqlite"
        self.docs = [Document(doc_id=f"doc-{uuid.uuid4().hex[:10]}", title=f"Note {rng.randint(100, 999)}",
                              body=" ".join(rng.sample(WORDS, 5)), facts=f"Facts: {' '.join(rng.sample(WORDS, 4))}.",
                              label=rng.choice(LABELS)) for _ in range(self.subjects)]
        rules = []
        for doc in self.docs:
            for task, reply in (("extract", doc.facts), ("classify", doc.label)):
                rules.append({"name": f"sweep09-{task}-{doc.doc_id}", "latency_ms": self.latency_ms, "reply": reply,
                              "match": re.escape(f"[lab09 task={task} doc={doc.doc_id}]")})
        self.llm.push_rules(rules)
        self.env = self.target.python_env(OPENAI_BASE_URL=self.llm.base_url, OPENAI_API_KEY=self.key,
                                          DATABASE_URL=f"sqlite:///{self.database}", LAB_SERVER_URL="")
        self.env.pop("HATCHET_CLIENT_TOKEN", None)
        self.running: dict[str, tuple] = {}  # doc_id -> (task, retry_count, process)
        self.epoch_start = time.time()
        self.gate = gate
        self.engine = asyncio.create_task(self._run_documents())

    async def _run_documents(self) -> None:
        for doc in self.docs:
            await self._run_document(doc)

    async def _run_document(self, doc: Document) -> None:
        """The engine's part: parents' order, parents' outputs, retries; a killed attempt runs again."""
        for task in self.order:
            parents = {p: doc.outputs[p] for p in self.tasks[task].get("parents", [])}
            retry_count = 0
            while True:
                await self.gate.wait()  # no attempt starts between a kill and the restart
                ok, output, process = await self._attempt(doc, task, parents, retry_count)
                if ok:
                    doc.outputs[task] = output
                    break
                if process.returncode == -9 and process.killed_with is not None:  # the sweep's kill
                    self.reassigned += 1
                    continue
                retry_count += 1
                if retry_count > int(self.tasks[task].get("retries", 0)):
                    doc.failed = f"{task}: {last_exception(process.output())}"
                    return

    async def _attempt(self, doc: Document, task: str, parents: dict, retry_count: int):
        name = f"{doc.doc_id}-{task}-{len(doc.attempts) + 1}"
        (self.trial_dir / f"{name}.input.json").write_text(json.dumps(doc.input()))
        (self.trial_dir / f"{name}.parents.json").write_text(json.dumps(parents))
        out = self.trial_dir / f"{name}.out.json"
        process = start_module(self.target, self.forks, "run_task",
                               [task, f"{name}.input.json", f"{name}.parents.json", str(retry_count), out.name],
                               name=name, log_path=self.trial_dir / f"{name}.log", env=self.env, cwd=self.trial_dir)
        doc.attempts.append((task, retry_count, process))
        self.running[doc.doc_id] = (task, retry_count, process)
        while process.alive:
            await asyncio.sleep(0.02)
        process.stop()
        self.running.pop(doc.doc_id, None)
        try:
            result = json.loads(out.read_text())
        except (OSError, ValueError):
            return False, None, process
        return bool(result.get("ok")), result.get("output"), process

    async def wait_ready(self) -> None:
        return None  # an attempt works from its first instruction: any moment is a moment

    def processes(self) -> list:
        return [process for _, _, process in self.running.values()]

    def _entries(self) -> list:
        return [e for e in self.llm.ledger().entries() if e.caller == self.key]

    async def landings(self) -> list[str]:
        found = []
        entries = self._entries()
        for doc_id, (task, retry_count, process) in self.running.items():
            if process.returncode != -9:
                found.append(f"{task} had already ended")
            elif task in LLM_TASKS and any(TAG.search(e.prompt or "") and TAG.search(e.prompt).groups() ==
                                           (task, doc_id) and e.at >= self.epoch_start for e in entries):
                found.append(f"{task}: LLM call in flight")
            else:
                found.append(f"{task} running (retry_count {retry_count})")
        return found or ["between attempts"]

    async def after_kill(self) -> None:
        return None  # SQLite rolls back a dead writer's open transaction by itself

    async def recorded(self) -> set[str]:
        return {f"{doc.doc_id}/{task}" for doc in self.docs for task in LLM_TASKS if task in doc.outputs}

    async def restart(self) -> None:
        self.epoch_start = time.time()  # the engine runs each killed task again as soon as the gate opens

    async def finish(self) -> None:
        await asyncio.wait_for(asyncio.shield(self.engine), timeout=self.finish_timeout_s)

    async def logical_calls(self) -> list[LogicalCall]:
        entries = self._entries()
        calls = []
        for doc in self.docs:
            for n, task in enumerate(LLM_TASKS):
                calls.append(LogicalCall(
                    key=f"{doc.doc_id}/{task}", subject=doc.doc_id,
                    successor=f"{doc.doc_id}/{LLM_TASKS[n + 1]}" if n + 1 < len(LLM_TASKS) else None,
                    entries=[(e.at, e.status) for e in entries
                             if (m := TAG.search(e.prompt or "")) and m.groups() == (task, doc.doc_id)]))
        return calls

    def _rows(self) -> list[tuple]:
        if not self.database.exists():
            return []
        connection = sqlite3.connect(f"{self.database.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return connection.execute("SELECT doc_id, facts, label FROM processed_documents").fetchall()
        except sqlite3.Error:
            return []
        finally:
            connection.close()

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        rows = self._rows()
        by_pid = {process.pid: (doc.doc_id, task) for doc in self.docs for task, _, process in doc.attempts}
        for doc in self.docs:
            if doc.failed or set(doc.outputs) != set(self.order):
                found.append(Violation(trial, doc.doc_id, "document lost",
                                       f"the run failed in {doc.failed}" if doc.failed else
                                       f"tasks recorded: {sorted(doc.outputs)}", f"all of {self.order} recorded"))
            mine = [r for r in rows if r[0] == doc.doc_id]
            if len(mine) != 1:
                found.append(Violation(trial, doc.doc_id, "not exactly one row per document",
                                       f"{len(mine)} row(s)", "1 (store runs again after a kill: it must find the row)"))
            elif (mine[0][1] or "").strip() != doc.facts or mine[0][2] != doc.label:
                found.append(Violation(trial, doc.doc_id, "the row does not hold the parents' outputs",
                                       f"facts={mine[0][1]!r}, label={mine[0][2]!r}",
                                       f"facts={doc.facts!r}, label={doc.label!r}"))
        strays = []
        for entry in self._entries():
            tag = TAG.search(entry.prompt or "")
            sender = by_pid.get((entry.origin or {}).get("pid"))
            if tag is None or (sender is not None and sender != (tag.group(2), tag.group(1))):
                strays.append((entry, sender))
        if strays:
            entry, sender = strays[0]
            found.append(Violation(trial, "course LLM", "LLM calls from another task's attempt, or untagged",
                                   f"{len(strays)} request(s), e.g. {(entry.prompt or '')[:80]!r} sent by {sender}",
                                   "every request tagged [lab09 task=T doc=D] and sent by an attempt of T for D"))
        return found

    def tallies(self) -> dict[str, int]:
        return {"task attempts run again after a kill": self.reassigned}

    async def end_trial(self) -> None:
        if not self.engine.done():
            self.engine.cancel()
        for doc in self.docs:
            for _, _, process in doc.attempts:
                process.stop()
