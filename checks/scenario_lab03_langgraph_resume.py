"""Lab 03's scenario: LangGraph threads on PostgreSQL survive graph processes SIGKILLed at random moments.

Shared with the check (checks/test_lab03_langgraph_resume.py: one crash after transform, by exit and by
SIGKILL, then resume): the nodes and the checkpoint shapes a thread must have, how a graph process is
started (forked from a warm interpreter, else a plain exec; confined as student code either way), which
node an LLM call is tagged with and which node really sent it, and reading a thread's checkpoints
with plain SQL and its latest state with LangGraph's saver. The sweep (`Sweep`, `lab sweep 03`) kills
at many seeded random moments and audits the same invariants.

Sweep, per trial: a fresh PostgreSQL database shared by `subjects` threads, each run by its own
`python -m <lab>.cli run --thread T` process (forked from a warm interpreter, as the Lab 03 check
does) with its own LLM key, started `start_gap_s` apart. A kill SIGKILLs every graph process
alive at that moment (a crashed host). The restart is what an operator would do: for every
killed thread, `cli resume --thread T` when the thread has a checkpoint, `cli run` again when
it has none (it died before LangGraph saved its input).

The checkpoint tables are created once per trial database before the threads start, as a deploy
step would (`cold_schema=True` skips it). Reason, a finding of this sweep: PostgresSaver.setup() is
not safe when several processes first use a fresh database at the same moment: the losers fail
with UniqueViolation on pg_type_typname_nsp_index (CREATE TABLE IF NOT EXISTS is not atomic
against a concurrent CREATE TABLE) or on checkpoint_migrations_pkey, and exit 1 before running.

Logical LLM call: node N of thread T = the ledger entries under T's key tagged
`[lab03 node=N]`; its successor is the next node (fetch -> transform -> report); recorded = the
thread has the checkpoint of N's step (fetch 1, transform 2, report 3).
Invariants verified at the end: every thread finished (its last process exited 0 and the state
holds the report); exactly one checkpoint per step, steps -1..3 (the N+2 = 5 rows of a finished
3-node thread: a crash adds none, loses none); no LLM call without a node tag.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from labkit import course, prefork, proc
from labkit.postgres import from_env
from labkit.services import CourseLLM
from labkit.sweep import LogicalCall, Violation
from labkit.sweep_kit import graded_copy, last_exception, with_latency

# Third-party modules the fork server imports once (never student code); see labkit.prefork.
PRELOAD = ["langgraph.graph", "langgraph.checkpoint.postgres", "langgraph.checkpoint.sqlite",
           "langgraph.checkpoint.memory", "openai", "psycopg"]
NODES = ["fetch", "transform", "report"]
STEP = {node: n + 1 for n, node in enumerate(NODES)}  # the checkpoint a node's result lands in
# (step, source) of a thread's checkpoints: the input (-1), START's hand-over (0), one per node: N + 2
EXPECTED_AFTER_CRASH = [(-1, "input"), (0, "loop"), (1, "loop"), (2, "loop")]
EXPECTED_FINISHED = EXPECTED_AFTER_CRASH + [(3, "loop")]
FINISHED_STEPS = [step for step, _ in EXPECTED_FINISHED]
NODE_TAG = re.compile(r"\[lab03 node=([\w-]+)\]")


# --- shared by the check and the sweep -----------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    id: str
    parent: str | None
    step: int | None
    source: str | None

    def shape(self) -> tuple:
        return (self.step, self.source)


def node_of(prompt: str) -> str | None:
    """The node an LLM request is tagged with (llm.ask(node, ...) puts `[lab03 node=N]` in the prompt)."""
    found = NODE_TAG.search(prompt)
    return found[1] if found else None


def sent_from(entry) -> str | None:
    """The LangGraph node that was running when the request was sent (labkit.attribution), "" outside any
    node, None when the request carried no origin (not judged)."""
    origin = getattr(entry, "origin", None)
    return None if origin is None else (origin.get("node") or "")


def stray(entry) -> bool:
    """The invariant on the LLM: a request tagged with no node, or sent while another node ran than the one
    it is tagged with, is no node's execution."""
    tag, sender = node_of(entry.prompt), sent_from(entry)
    return tag not in NODES or (sender is not None and sender != tag)


def start_cli(target, forks: prefork.ForkServer | None, args: list[str], *, name: str, log_path: Path,
              env: dict[str, str], cwd: Path):
    """`python -m <lab>.cli ARGS`, forked from the warm interpreter when one runs, else a plain exec:
    student code, confined either way (labkit.limits)."""
    module = target.module("cli")
    if forks is not None:
        return forks.start(module, args, name=name, log_path=log_path, env=env, cwd=cwd)
    return proc.start([sys.executable, "-m", module, *args], name=name, log_path=log_path, env=env, cwd=cwd,
                      student=True)


def postgres_checkpoints(conn, threads: list[str]) -> dict[str, list[Checkpoint]] | None:
    """Each thread's checkpoints (default namespace) by plain SQL, in checkpoint-id order; None when the
    checkpoint tables do not exist. `conn`: a psycopg connection (any row factory)."""
    from psycopg.rows import tuple_row

    with conn.cursor(row_factory=tuple_row) as cursor:
        if not cursor.execute("SELECT to_regclass('public.checkpoints') IS NOT NULL").fetchone()[0]:
            return None
        found: dict[str, list[Checkpoint]] = {thread: [] for thread in threads}
        for thread, checkpoint, parent, source, step in cursor.execute(
                "SELECT thread_id, checkpoint_id, parent_checkpoint_id, metadata->>'source', "
                "(metadata->>'step')::int FROM checkpoints WHERE checkpoint_ns = '' AND thread_id = ANY(%s) "
                "ORDER BY checkpoint_id", (list(threads),)).fetchall():
            found[thread].append(Checkpoint(checkpoint, parent, step, source))
    return found


def latest_values(saver, thread: str) -> dict | None:
    """The channel values of the thread's latest checkpoint, read with LangGraph's own saver."""
    latest = saver.get_tuple({"configurable": {"thread_id": thread}})
    return dict(latest.checkpoint.get("channel_values", {})) if latest else None


# --- the sweep -----------------------------------------------------------------------------------


class Sweep:
    lab = "03"

    def __init__(self, workdir: Path, subjects: int = 5, path: Path | None = None, latency_ms: int = 250,
                 start_gap_s: float = 0.6, kill_window: tuple[float, float] = (0.3, 1.5),
                 finish_timeout_s: float = 30.0, cold_schema: bool = False):
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.cold_schema = cold_schema
        self.latency_ms, self.start_gap_s, self.kill_window = latency_ms, start_gap_s, kill_window
        self.finish_timeout_s = finish_timeout_s
        self.run_id = uuid.uuid4().hex[:6]

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        self.target = graded_copy(self.lab, self.workdir, self.path)
        state = self.workdir / "services"
        self.postgres = from_env(state / "pg")
        self.llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env()) \
            if prefork.enabled() else None
        for server in filter(None, (self.postgres, self.llm, self.forks)):
            server.launch()
        await asyncio.to_thread(self.llm.wait_ready)
        self.llm.push_rules(with_latency([f"lab03-{node}" for node in NODES], self.latency_ms))
        await asyncio.to_thread(self.postgres.wait_ready)
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)

    async def stop(self) -> None:
        for server in filter(None, (getattr(self, "forks", None), getattr(self, "llm", None),
                                    getattr(self, "postgres", None))):
            server.stop()

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        key = f"{self.run_id}-t{trial}"
        self.trial_dir = self.workdir / f"trial{trial}"
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = self.postgres.create_database(f"sweep03_{key.replace('-', '_')}")
        if not self.cold_schema:
            await asyncio.to_thread(self._create_schema)
        self.epoch_start = time.time()
        self.keys = {f"report-{key}-{i}": f"lab-sweep03-{key}-{i}" for i in range(self.subjects)}  # thread: key
        self.runs: dict[str, list] = {}  # thread: its processes, oldest first
        self.gate = gate
        self.feed = asyncio.create_task(self._start_threads())

    def _create_schema(self) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(self.database_url) as saver:
            saver.setup()

    async def _start_threads(self) -> None:
        for n, thread in enumerate(self.keys):
            if n:
                await asyncio.sleep(self.start_gap_s)
            await self.gate.wait()
            self._spawn(thread, "run")

    def _spawn(self, thread: str, command: str) -> None:
        runs = self.runs.setdefault(thread, [])
        args = [command, "--thread", thread]
        name, log_path = f"{thread}-{len(runs) + 1}-{command}", self.trial_dir / f"{thread}-{len(runs) + 1}.log"
        env = self.target.python_env(OPENAI_BASE_URL=self.llm.base_url, OPENAI_API_KEY=self.keys[thread],
                                     DATABASE_URL=self.database_url)
        runs.append(start_cli(self.target, self.forks, args, name=name, log_path=log_path, env=env,
                              cwd=self.trial_dir))

    async def wait_ready(self) -> None:
        return None  # a graph process works from its first instruction: any moment is a moment

    def processes(self) -> list:
        return [runs[-1] for runs in self.runs.values()]

    def _steps(self) -> dict[str, list[int]]:
        """Each thread's checkpoint steps (default namespace), as plain SQL sees them."""
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            found = postgres_checkpoints(conn, list(self.keys))
        return {thread: [c.step for c in (found or {}).get(thread, [])] for thread in self.keys}

    def _calls(self) -> dict[str, list]:
        """Each thread's ledger entries, oldest first."""
        callers = {key: thread for thread, key in self.keys.items()}
        found = {thread: [] for thread in self.keys}
        for entry in self.llm.ledger().entries():
            if entry.caller in callers:
                found[callers[entry.caller]].append(entry)
        return found

    async def landings(self) -> list[str]:
        steps, calls = self._steps(), self._calls()
        found = []
        for thread in self.keys:
            runs = self.runs.get(thread)
            if not runs:
                found.append("thread not started yet")
            elif runs[-1].returncode != -9 or runs[-1].killed_with is None:
                found.append("thread's process had already exited")
            elif not steps[thread]:
                found.append("process starting, no checkpoint yet")
            elif max(steps[thread]) >= STEP[NODES[-1]]:
                found.append("after report's checkpoint, before exit")
            else:
                node = NODES[max(max(steps[thread]), 0)]  # the node that runs next
                called = any(node_of(e.prompt) == node and e.at >= self.epoch_start for e in calls[thread])
                found.append(f"{node}: LLM call in flight" if called else f"between steps, before {node}")
        return found

    async def after_kill(self) -> None:
        return None  # PostgreSQL rolls back a dead client's open transaction by itself

    async def recorded(self) -> set[str]:
        return {f"{thread}/{node}" for thread, steps in self._steps().items() for node in NODES
                if STEP[node] in steps}

    async def restart(self) -> None:
        self.epoch_start = time.time()
        steps = self._steps()
        for thread, runs in list(self.runs.items()):
            if runs[-1].killed_with is not None and runs[-1].returncode == -9:  # the sweep's kill, not a failure
                self._spawn(thread, "resume" if steps[thread] else "run")

    async def finish(self) -> None:
        deadline = time.monotonic() + self.finish_timeout_s
        await asyncio.wait_for(self.feed, timeout=self.finish_timeout_s)
        while any(p.alive for p in self.processes()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def logical_calls(self) -> list[LogicalCall]:
        calls = self._calls()
        # A call from no node, or sent while another node ran than the one it is tagged with (the
        # request's origin, labkit.attribution; None when it carried none), belongs to no logical call.
        self.strays = [e for entries in calls.values() for e in entries if stray(e)]
        return [LogicalCall(key=f"{thread}/{node}", subject=thread,
                            successor=f"{thread}/{NODES[n + 1]}" if n + 1 < len(NODES) else None,
                            entries=[(e.at, e.status) for e in entries if node_of(e.prompt) == node])
                for thread, entries in calls.items() for n, node in enumerate(NODES)]

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        steps = self._steps()
        reports = self._reports()
        for thread in self.keys:
            last = self.runs[thread][-1] if self.runs.get(thread) else None
            if last is None or last.alive or last.returncode != 0:
                state = ("never started" if last is None else
                         f"still running after {self.finish_timeout_s:.0f} s" if last.alive else
                         f"exit status {last.returncode}: {last_exception(last.output())}")
                found.append(Violation(trial, thread, "thread lost", f"its last process: {state}",
                                       "the last run/resume exits 0"))
            if not reports.get(thread):
                found.append(Violation(trial, thread, "thread lost", "no report in the thread's latest checkpoint",
                                       "the finished state holds report's text"))
            if sorted(steps[thread]) != FINISHED_STEPS:
                found.append(Violation(trial, thread, "not exactly one checkpoint per step",
                                       f"checkpoint steps {sorted(steps[thread])}",
                                       f"steps {FINISHED_STEPS}: one each (N+2 = 5 for 3 nodes)"))
        if self.strays:
            found.append(Violation(trial, "course LLM", "LLM calls from no node or another node",
                                   f"{len(self.strays)} request(s), e.g. {self.strays[0].prompt[:80]!r} sent by "
                                   f"{sent_from(self.strays[0])!r}",
                                   "every request tagged [lab03 node=N] and sent while node N ran"))
        return found

    def _reports(self) -> dict[str, str]:
        """The report text in each thread's latest checkpoint, read with LangGraph's own saver."""
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver

        found = {}
        with psycopg.connect(self.database_url, autocommit=True, prepare_threshold=0) as conn:
            saver = PostgresSaver(conn)
            for thread in self.keys:
                try:
                    values = latest_values(saver, thread)
                except psycopg.Error:
                    values = None
                found[thread] = values.get("report") if values else None
        return found

    async def end_trial(self) -> None:
        if not self.feed.done():
            self.feed.cancel()
        for runs in self.runs.values():
            for process in runs:
                process.stop()
