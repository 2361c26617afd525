"""Lab 04 crash sweep: research threads paused for a human survive SIGKILLs of every graph process,
before, during and after the review, and the human's decision is applied exactly once.

Per trial: a fresh PostgreSQL database (tables created once, as in Lab 03's sweep) shared by
`subjects` threads, each with its own LLM key and course-web caller, one of four kinds (by index):
pause "before" or "interrupt", approved as is or with an edited summary. Every step is a new
`python -m <lab>.cli` process (forked from a warm interpreter, as the Lab 04 check does):
  run       search -> summarize -> pause, exits;
  approve   the human's decision, `reviewer_delay_s` after the run paused (the thread then sits in
            the database with no process at all: kills land there too), runs review, exits.
A kill SIGKILLs every graph process alive (a crashed host). The restart is the operator's:
  a killed run with no checkpoint     -> `run` again;
  a killed run paused or beyond       -> nothing (it waits for the human, who re-sends below);
  a killed run in between             -> `resume`: continue from the thread's latest checkpoint with
                                         no new input (checks/scenario_lab04_resume.py, with the lab's
                                         graph and saver; the CLI has no resume: `replay` from the
                                         head writes a fork checkpoint, see that file);
  a killed approve, review not saved  -> the human sends the same decision again.

Two ledgers, one rule (labkit.sweep):
- LLM: summarize of thread T = T's entries tagged `[lab04 node=summarize]`; recorded = the
  checkpoint of summarize's step (2).
- web: T's search (successor: summarize's LLM call; recorded = search's checkpoint, step 1) and
  each page summarize reads (recorded with summarize's checkpoint; no successor: summarize reads
  its pages again whenever it runs again, which a kill in flight allows).
Invariants verified at the end: every thread finished (its last process exited 0), its state
approved, exactly one review message whose text is the edit (or the LLM's summary); the graph's
own checkpoints (sources input/loop) one per step; no LLM call without the node tag.
Counted, not failed: an edit written twice (the human re-sent a decision whose update_state had
been saved before the kill: one more "update" checkpoint, the same value).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from labkit import course, prefork, proc
from labkit.postgres import from_env
from labkit.services import CourseLLM
from labkit.sweep import LogicalCall, Violation
from labkit.web import CourseWeb
from labkit.sweep_kit import graded_copy, last_exception, with_latency

# --- what the check and the sweep share ------------------------------------------------------------

# Third-party modules a fork server imports once for the CLI processes (never student code; see
# labkit.prefork); the last ones are what the first LLM call and the first page read import lazily.
PRELOAD = ["langgraph.graph", "langgraph.graph.message", "langgraph.types", "langgraph.checkpoint.postgres",
           "langgraph.checkpoint.sqlite", "langgraph.checkpoint.memory", "langchain_core.messages", "openai",
           "psycopg", "httpx", "openai.resources.chat.completions", "openai.lib.streaming.chat", "httpcore", "h11",
           "httpcore2", "truststore", "jiter", "langchain_core.tracers.run_collector", "langchain_core.tracers.stdout"]
NODE_TAG = re.compile(r"\[lab04 node=([\w-]+)\]")  # the course's llm.py tags each prompt with its node
QUERY = "quantum error correction"


def tagged_node(prompt: str | None) -> str | None:
    """The node an LLM request says it was sent for (the course's llm.py tags every prompt)."""
    found = NODE_TAG.search(prompt or "")
    return found[1] if found else None


def cli_env(target, llm, web, key: str, database_url: str, **extra: str) -> dict[str, str]:
    """A CLI process's environment: its own LLM key and course-web caller (`key`), its database."""
    return target.python_env(OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY=key, COURSE_WEB_URL=web.url_for(key),
                             DATABASE_URL=database_url, **extra)


def start_cli(target, forks, module: str, argv: list[str], *, name: str, log_path: Path, env: dict[str, str],
              cwd: Path, student: bool = False):
    """`python -m <module> <argv>` as its own process: forked from the warm interpreter when there is one
    (labkit.prefork), else a plain exec."""
    if forks is not None:
        return forks.start(module, argv, name=name, log_path=log_path, env=env, cwd=cwd)
    return proc.start([sys.executable, "-m", module, *argv], name=name, log_path=log_path, env=env, cwd=cwd,
                      **({"student": True} if student else {}))


def checkpoint_rows(conn, threads: list[str]) -> dict[str, list[tuple[str, str | None, int | None, str | None]]]:
    """Each thread's (checkpoint id, parent id, step, source), oldest first, as plain SQL sees them
    (the root namespace only: a subgraph's checkpoints are not the thread's steps)."""
    from psycopg.rows import tuple_row

    found: dict[str, list] = {thread: [] for thread in threads}
    with conn.cursor(row_factory=tuple_row) as cursor:
        cursor.execute("SELECT thread_id, checkpoint_id, parent_checkpoint_id, (metadata->>'step')::int, "
                       "metadata->>'source' FROM checkpoints WHERE checkpoint_ns = '' AND thread_id = ANY(%s) "
                       "ORDER BY checkpoint_id", (list(threads),))
        for thread, checkpoint_id, parent, step, source in cursor.fetchall():
            found[thread].append((checkpoint_id, parent, step, source))
    return found


# --- the sweep -----------------------------------------------------------------------------------

KINDS = [("before", None), ("before", "EDITED by the sweep's reviewer"), ("interrupt", "EDITED in review"),
         ("interrupt", None)]
SEARCH_STEP, SUMMARIZE_STEP, REVIEW_STEP = 1, 2, 3  # the checkpoint each node's result lands in (no edit)
SUMMARIZE_TAG = "[lab04 node=summarize]"
RESUME_MODULE = "sweep_resume"  # scenario_lab04_resume.py, copied next to the graded lab folder


class Sweep:
    lab = "04"

    def __init__(self, workdir: Path, subjects: int = 4, path: Path | None = None, latency_ms: int = 300,
                 page_ms: int = 40, reviewer_delay_s: float = 0.4, start_gap_s: float = 0.5,
                 kill_window: tuple[float, float] = (0.3, 1.6), finish_timeout_s: float = 40.0):
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.page_ms, self.reviewer_delay_s = latency_ms, page_ms, reviewer_delay_s
        self.start_gap_s, self.kill_window, self.finish_timeout_s = start_gap_s, kill_window, finish_timeout_s
        self.run_id = uuid.uuid4().hex[:6]
        self.counts: Counter = Counter()

    def tallies(self) -> dict[str, int]:
        return dict(self.counts)

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        self.target = graded_copy(self.lab, self.workdir, self.path)
        shutil.copy(Path(__file__).with_name("scenario_lab04_resume.py"), self.target.root / f"{RESUME_MODULE}.py")
        state = self.workdir / "services"
        self.postgres = from_env(state / "pg")
        self.llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
        self.web = CourseWeb(state / "web-server")
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env()) \
            if prefork.enabled() else None
        for server in filter(None, (self.forks, self.postgres, self.llm, self.web)):
            server.launch()
        await asyncio.to_thread(self.llm.wait_ready)
        self.llm.push_rules(with_latency(["lab04-summarize-surface-code", "lab04-summarize"], self.latency_ms))
        await asyncio.to_thread(self.web.wait_ready)
        await asyncio.to_thread(self.postgres.wait_ready)
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)

    async def stop(self) -> None:
        for server in filter(None, (getattr(self, name, None) for name in ("forks", "web", "llm", "postgres"))):
            server.stop()

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        key = f"{self.run_id}-t{trial}"
        self.trial_dir = self.workdir / f"trial{trial}"
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = self.postgres.create_database(f"sweep04_{key.replace('-', '_')}")
        await asyncio.to_thread(self._create_schema)
        self.threads = {f"research-{key}-{i}": KINDS[i % len(KINDS)] for i in range(self.subjects)}
        self.keys = {thread: f"lab-sweep04-{key}-{i}" for i, thread in enumerate(self.threads)}  # LLM key, web caller
        for caller in self.keys.values():
            for slug in self._pages_of_query():
                self.web.set_behaviour(slug, caller=caller, slow_ms=self.page_ms)
        self.runs: dict[str, list[tuple[str, object]]] = {}  # thread: (command, process), oldest first
        self.started_at: dict[int, float] = {}  # pid: time.monotonic() at its start
        self.paused_by_kill: set[str] = set()  # killed after the pause was saved: waits for the human
        self.done_by_kill: set[str] = set()  # approve killed after review was saved: nothing left to do
        self.epoch_start = time.time()
        self.gate = gate
        self.feed = asyncio.create_task(self._drive())

    def _pages_of_query(self) -> list[str]:
        from labkit.web import DEFAULT_CORPUS, load_corpus, rank

        corpus, _ = load_corpus([DEFAULT_CORPUS])
        return [doc.slug for doc in rank(corpus, QUERY, 5)]

    def _create_schema(self) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(self.database_url) as saver:
            saver.setup()

    def _spawn(self, thread: str, command: str, *args: str) -> None:
        pause, _ = self.threads[thread]
        runs = self.runs.setdefault(thread, [])
        if command == "resume":
            module, argv = RESUME_MODULE, [self.target.name, thread, pause]
        else:
            module, argv = self.target.module("cli"), [command, "--thread", thread, "--pause", pause, *args]
        process = start_cli(self.target, self.forks, module, argv, name=f"{thread}-{len(runs) + 1}-{command}",
                            log_path=self.trial_dir / f"{thread}-{len(runs) + 1}.log",
                            env=cli_env(self.target, self.llm, self.web, self.keys[thread], self.database_url),
                            cwd=self.trial_dir)
        runs.append((command, process))
        self.started_at[process.pid] = time.monotonic()

    def _approve(self, thread: str) -> None:
        _, edit = self.threads[thread]
        self._spawn(thread, "approve", *(["--summary", edit] if edit else []))

    async def _drive(self) -> None:
        """Start the threads, staggered; then be the human: approve each thread once its run paused."""
        waiting = list(self.threads)
        next_start = time.monotonic()
        paused_at: dict[str, float] = {}
        while True:
            await self.gate.wait()
            if waiting and time.monotonic() >= next_start:
                self._spawn(waiting.pop(0), "run")
                next_start = time.monotonic() + self.start_gap_s
            for thread, runs in self.runs.items():
                command, process = runs[-1]
                if command in ("run", "resume") and (process.returncode == 0 or thread in self.paused_by_kill):
                    paused_at.setdefault(thread, time.monotonic())
                    if time.monotonic() - paused_at[thread] >= self.reviewer_delay_s:
                        paused_at.pop(thread)
                        self.paused_by_kill.discard(thread)
                        self._approve(thread)
            await asyncio.sleep(0.05)

    async def wait_ready(self) -> None:
        return None  # a graph process works from its first instruction

    def processes(self) -> list:
        return [runs[-1][1] for runs in self.runs.values()]

    # --- evidence ---------------------------------------------------------------------------------

    def _checkpoints(self) -> dict[str, list[tuple[int, str, str]]]:
        """Each thread's (step, source, checkpoint id), oldest first, as plain SQL sees them."""
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            rows = checkpoint_rows(conn, list(self.threads))
        return {thread: [(step, source, checkpoint_id) for checkpoint_id, _, step, source in mine]
                for thread, mine in rows.items()}

    def _calls(self) -> dict[str, list]:
        callers = {key: thread for thread, key in self.keys.items()}
        found = {thread: [] for thread in self.threads}
        for entry in self.llm.ledger().entries():
            if entry.caller in callers:
                found[callers[entry.caller]].append(entry)
        return found

    def _reviewed(self, checkpoints: list[tuple[int, str, str]]) -> bool:
        """review's checkpoint is saved: the one after the pause (with an edit, after the update's)."""
        pause_step = max((s for s, source, _ in checkpoints if source == "loop" and s <= SUMMARIZE_STEP), default=-9)
        return any(source == "loop" and s > pause_step and s > SUMMARIZE_STEP for s, source, _ in checkpoints)

    def _finished(self, thread: str) -> bool:
        command, process = self.runs[thread][-1]
        return thread in self.done_by_kill or (command == "approve" and process.returncode == 0)

    def _reached(self, checkpoints: list[tuple[int, str, str]], step: int) -> bool:
        return any(s >= step and source == "loop" for s, source, _ in checkpoints)

    async def landings(self) -> list[str]:
        checkpoints = self._checkpoints()
        found = []
        for thread in self.threads:
            runs = self.runs.get(thread)
            if not runs:
                found.append("thread not started yet")
                continue
            command, process = runs[-1]
            mine = checkpoints[thread]
            if process.returncode != -9 or process.killed_with is None or thread in self.done_by_kill:
                done = self._finished(thread)
                found.append("thread finished" if done else f"paused for the human, no process ({command} exited)")
            elif command == "approve":
                found.append("approve running (the decision in flight)")
            elif not mine:
                found.append(f"{command}: starting, no checkpoint yet")
            elif self._reached(mine, SUMMARIZE_STEP):
                found.append(f"{command}: paused, before exit")
            elif self._reached(mine, SEARCH_STEP):
                found.append(f"{command}: summarize running (pages, LLM)")
            else:
                found.append(f"{command}: search running")
        return found

    async def after_kill(self) -> None:
        return None  # PostgreSQL rolls back a dead client's open transaction by itself

    async def recorded(self) -> set[str]:
        found = set()
        for thread, mine in self._checkpoints().items():
            if self._reached(mine, SEARCH_STEP):
                found.add(f"web:{thread}/search")
            if self._reached(mine, SUMMARIZE_STEP):
                found |= {f"{thread}/summarize"} | {f"web:{thread}/{slug}" for slug in self._pages_of_query()}
        return found

    async def restart(self) -> None:
        self.epoch_start = time.time()
        checkpoints = self._checkpoints()
        for thread, runs in list(self.runs.items()):
            command, process = runs[-1]
            if process.killed_with is None or process.returncode != -9:
                continue  # not the sweep's kill
            mine = checkpoints[thread]
            if command == "approve" and self._reviewed(mine):
                self.done_by_kill.add(thread)  # killed after review's checkpoint, before exit
            elif command == "approve":
                self._approve(thread)  # the human sends the same decision again
                self.counts["decisions re-sent after a kill"] += 1
            elif not mine:
                self._spawn(thread, "run")
            elif self._reached(mine, SUMMARIZE_STEP):
                self.paused_by_kill.add(thread)  # the pause was saved: the human approves it
            else:
                self._spawn(thread, "resume")

    def _failed(self, thread: str) -> bool:
        """The thread's last process exited non-zero by itself (not by the sweep's kill): it will not finish."""
        _, process = self.runs[thread][-1]
        return process.returncode not in (None, 0) and thread not in self.done_by_kill | self.paused_by_kill

    async def finish(self) -> None:
        # Wait until every thread has finished or failed, not until the first failure: stopping then
        # would report the other threads' processes, started a moment before at the same restart, as
        # "still running" with no request made (that was the "replay hang" of commit 2eb1e24).
        started = time.monotonic()
        while time.monotonic() < started + self.finish_timeout_s:
            settled = [self._finished(thread) or self._failed(thread) for thread in self.runs]
            if len(settled) == len(self.threads) and all(settled):
                break  # verify() says which failed
            await asyncio.sleep(0.05)
        self.waited_s = time.monotonic() - started
        self.feed.cancel()

    # --- the ledgers ----------------------------------------------------------------------------------

    async def logical_calls(self) -> list[LogicalCall]:
        calls = self._calls()
        # summarize's call, tagged and sent while summarize ran (the request's origin; None: it carried none)
        self.strays = [e for entries in calls.values() for e in entries if tagged_node(e.prompt) != "summarize"
                       or (getattr(e, "origin", None) is not None and e.origin.get("node") != "summarize")]
        return [LogicalCall(key=f"{thread}/summarize", subject=thread, successor=None,
                            entries=[(e.at, e.status) for e in entries if tagged_node(e.prompt) == "summarize"])
                for thread, entries in calls.items()]

    async def ledgers(self) -> dict[str, tuple[str, list[LogicalCall]]]:
        calls = []
        for thread, caller in self.keys.items():
            entries = self.web.ledger().entries(caller=caller)
            calls.append(LogicalCall(key=f"web:{thread}/search", subject=thread, successor=f"{thread}/summarize",
                                     entries=[(e.at, e.status) for e in entries if e.kind == "search"]))
            calls += [LogicalCall(key=f"web:{thread}/{slug}", subject=thread, successor=None,
                                  entries=[(e.at, e.status) for e in entries if e.kind == "fetch" and e.slug == slug])
                      for slug in self._pages_of_query()]
        return {"web": ("web request", calls)}

    # --- the end state --------------------------------------------------------------------------------

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        checkpoints = self._checkpoints()
        states = self._states()
        summary_text = self._llm_summary()
        for thread, (pause, edit) in self.threads.items():
            runs = self.runs.get(thread, [])
            command, last = runs[-1] if runs else ("-", None)
            if last is None or not self._finished(thread):
                state = ("never started" if last is None else
                         f"{command} still running, {time.monotonic() - self.started_at[last.pid]:.1f} s after "
                         f"its start (the sweep waited {self.waited_s:.1f} s of {self.finish_timeout_s:.0f} s for "
                         f"the threads to finish or fail)" if last.alive else
                         f"{command} exit status {last.returncode}: {last_exception(last.output())}"
                         if last.returncode else f"{command} exited 0, never approved")
                found.append(Violation(trial, thread, "thread lost", f"its last process: {state}",
                                       "the last process is the human's approve, exit 0"))
                continue
            values = states.get(thread) or {}
            reviews = [m for m in values.get("messages", []) if getattr(m, "name", None) == "review"]
            want = edit or summary_text
            if values.get("status") != "approved" or [m.content for m in reviews] != [want]:
                found.append(Violation(trial, thread, "the decision not applied exactly once",
                                       f"status {values.get('status')!r}, review messages "
                                       f"{[m.content[:40] for m in reviews]}",
                                       f"status 'approved', one review message {want[:40]!r}"))
            graph_steps = Counter(step for step, source, _ in checkpoints[thread] if source in ("input", "loop"))
            twice = sorted(step for step, n in graph_steps.items() if n > 1)
            if twice:
                found.append(Violation(trial, thread, "not one checkpoint per step",
                                       f"steps written twice: {twice} (all: {sorted(graph_steps.elements())})",
                                       "each step's checkpoint once: a resumed node re-runs, it adds no step"))
            updates = sum(source == "update" for _, source, _ in checkpoints[thread])
            self.counts["edits written twice"] += max(0, updates - (1 if edit and pause == "before" else 0))
        if self.strays:
            found.append(Violation(trial, "course LLM", "LLM calls from no node or another node",
                                   f"{len(self.strays)} request(s), e.g. {self.strays[0].prompt[:80]!r} sent by "
                                   f"{(getattr(self.strays[0], 'origin', None) or {}).get('node')!r}",
                                   f"every request tagged {SUMMARIZE_TAG} and sent while summarize ran"))
        return found

    def _llm_summary(self) -> str:
        from labkit.llm import RuleBook

        for rule in RuleBook.from_file(course.COURSE_TOML).rules:
            if rule.name == "lab04-summarize":
                return rule.reply or ""
        return ""

    def _states(self) -> dict[str, dict]:
        """Each thread's latest state, read with LangGraph's own saver."""
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver

        found = {}
        with psycopg.connect(self.database_url, autocommit=True, prepare_threshold=0) as conn:
            saver = PostgresSaver(conn)
            for thread in self.threads:
                latest = saver.get_tuple({"configurable": {"thread_id": thread}})
                found[thread] = latest.checkpoint.get("channel_values", {}) if latest else {}
        return found

    async def end_trial(self) -> None:
        if not self.feed.done():
            self.feed.cancel()
        for runs in self.runs.values():
            for _, process in runs:
                process.stop()
        self.web.reset_behaviours()
