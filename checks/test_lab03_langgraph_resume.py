"""Lab 03 autograder: a LangGraph run that dies after transform resumes with report only.

Scenario, run once for the module against a fresh PostgreSQL and course LLM: three
chains of real processes side by side, each with its own thread id, database (or
SQLite file) and LLM key:
  pg      run --crash-after transform (sys.exit(1)) -> resume -> resume again
  kill    run --crash-after transform --crash-with kill (SIGKILL) -> resume
  sqlite  run --crash-after transform --sqlite FILE -> resume            (part 2)
  early   run --crash-after fetch -> resume   (a resume with two nodes to run: each must be saved as
          it finishes; the crash sweep found a resume that saves only when it returns, which the
          one-node resumes above cannot tell apart: tests/variants/lab03/resume_durability_exit)
After every process the grader gathers its evidence from outside the student's code:
the course LLM's ledger (which node called the LLM, in which process), the
checkpointer's own list() on a fresh connection, and plain SQL on the checkpoint tables.

Each process is `python -m <lab>.cli ...`, forked from a warm interpreter that has
already imported langgraph and friends (labkit.prefork: about 1 s of CPU saved per
process, seven times); LAB_PREFORK=0 starts each with a plain exec instead, same verdicts.

The scenario's shared parts (the nodes and checkpoint shapes, starting a graph process, which node
tagged and which node sent an LLM call, reading checkpoints by SQL and by the saver) live in
checks/scenario_lab03_langgraph_resume.py, which the crash sweep (`lab sweep 03`) runs at many random
moments; this check is its chosen crash (after transform) and its teaching messages.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labkit import course, prefork, proc
from labkit.feedback import CheckFailed, NotChecked, student_error, tail, unfinished, unreachable
from labkit.llm import Ledger
from labkit.services import CourseLLM

from scenario_lab03_langgraph_resume import (EXPECTED_AFTER_CRASH, EXPECTED_FINISHED, NODES, PRELOAD, Checkpoint,
                                             latest_values, node_of, postgres_checkpoints, sent_from, start_cli)

LAB = "03"
IDLE_LIMIT_S = 20.0  # a student process that sleeps this long, all but idle, is stuck (see Watchdog)
CPU_LIMIT_S = 60.0  # ... or that used this much CPU (one CLI step needs 0.1-3 s, forked or not)
# A hang guard for the grader itself, never a verdict: each student process ends, or the Watchdog
# judges it stuck by its progress, whatever the machine's speed. A plain exec at a quarter core
# under load took 135 s for the whole scenario (the course-wide 120 s stopped a correct solution).
HANG_S = 600.0
CRASH_MARK = re.compile(r"CRASH \((exit|kill)\) after (\w+)")
DURABILITY_MARK = re.compile(r"CRASH \((?:exit|kill)\) after \w+.*\(durability=('sync'|'async'|'exit'|None)\)")

REVISIT_N_PLUS_2 = ("§64.2.3: LangGraph saves one checkpoint for the input (step -1, source \"input\") and "
                    "one after every superstep (source \"loop\"): step 0 when START hands the input over, "
                    "then one per node. A finished 3-node line leaves 3 + 2 = 5; the text's \"three "
                    "checkpoint entries\" is wrong. Died before report: 4.")
REVISIT_DURABILITY = ("Durability decides when a checkpoint reaches the database: \"sync\" before the next "
                      "step starts, \"async\" (the default) in the background while it runs, \"exit\" only "
                      "when the run returns. A crash is not a return. The lab asks for DURABILITY = \"sync\" "
                      "in graph.py, passed to every stream()/invoke().")
REVISIT_RESUME = ("Resuming is app.invoke(None, config) with the same thread_id: None means \"no new "
                  "input, continue from the last checkpoint\". Passing an input starts the thread over.")


pytestmark = pytest.mark.timeout(HANG_S)  # the scenario runs inside the first check

# --- evidence ------------------------------------------------------------------------------------

@dataclass
class Snapshot:
    """What the grader saw when one student process ended."""

    label: str
    argv: list[str]
    exit_code: int | None
    log: str
    seconds: float
    calls: list[str] = field(default_factory=list)  # nodes that called the LLM during this process (prompt tag)
    # per call, the origin the request carried (labkit.attribution): None when it carried none (not judged),
    # else the LangGraph node running when the request was sent ("" outside any node)
    made_in: list[str | None] = field(default_factory=list)
    tables: bool = False  # the checkpoint tables exist
    library: list[Checkpoint] = field(default_factory=list)  # saver.list(config), oldest first
    sql: list[Checkpoint] = field(default_factory=list)  # SELECT ... ORDER BY checkpoint_id
    final: dict | None = None  # channel values of the thread's latest checkpoint
    error: str | None = None  # why the evidence could not be read
    stuck: str | None = None  # why the grader killed the process (see Watchdog)

    @property
    def crash(self) -> tuple[str, str] | None:
        found = CRASH_MARK.findall(self.log)
        return found[-1] if found else None

    @property
    def durability(self) -> str | None:
        """The durability mode the crashed run streamed with, as the course's crash helper saw it
        ("None" when the run passed none: LangGraph's default, "async")."""
        found = DURABILITY_MARK.findall(self.log)
        return found[-1].strip("'") if found else None

    def shapes(self, source: str = "library") -> list[tuple]:
        return [c.shape() for c in getattr(self, source)]

    def describe(self) -> str:
        return ", ".join(f"step {c.step} ({c.source})" for c in self.library) or "none"


@dataclass
class Chain:
    name: str
    backend: str  # "postgres" | "sqlite"
    thread: str
    key: str  # the LLM key: the ledger's caller
    location: str  # DATABASE_URL or the SQLite file
    steps: list[tuple[str, list[str], set[int]]]  # (label, cli args, exit codes that let the chain go on)
    snaps: dict[str, Snapshot] = field(default_factory=dict)
    stopped: str | None = None  # why the chain stopped early
    ledger_seen: int = 0

    def snap(self, label: str) -> Snapshot:
        found = self.snaps.get(label)
        if found is None:
            raise NotChecked(f"not checked: the `{self.step_args(label)}` step never ran"
                             + (f" ({self.stopped})" if self.stopped else ""))
        return found

    def step_args(self, label: str) -> str:
        for name, args, _ in self.steps:
            if name == label:
                return " ".join(args)
        return label


def read_postgres(url: str, thread: str, snap: Snapshot) -> None:
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver

    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        found = postgres_checkpoints(conn, [thread])
        snap.tables = found is not None
        if not snap.tables:
            return
        snap.sql = found[thread]
        read_library(PostgresSaver(conn), thread, snap)


def read_sqlite(path: str, thread: str, snap: Snapshot) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    if not Path(path).exists():
        return
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        snap.tables = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'").fetchone() is not None
        if not snap.tables:
            return
        rows = db.execute(
            "SELECT checkpoint_id, parent_checkpoint_id, json_extract(CAST(metadata AS TEXT), '$.source'), "
            "json_extract(CAST(metadata AS TEXT), '$.step') FROM checkpoints "
            "WHERE thread_id = ? AND checkpoint_ns = '' ORDER BY checkpoint_id", (thread,)).fetchall()
    snap.sql = [Checkpoint(r[0], r[1], r[3], r[2]) for r in rows]
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        read_library(SqliteSaver(conn), thread, snap)
    finally:
        conn.close()


def read_library(saver, thread: str, snap: Snapshot) -> None:
    config = {"configurable": {"thread_id": thread}}
    tuples = list(saver.list(config))[::-1]
    snap.library = [Checkpoint(t.config["configurable"]["checkpoint_id"],
                               (t.parent_config or {}).get("configurable", {}).get("checkpoint_id"),
                               t.metadata.get("step"), t.metadata.get("source")) for t in tuples]
    snap.final = latest_values(saver, thread)


# --- the scenario --------------------------------------------------------------------------------

class Harness:
    def __init__(self, target, llm: CourseLLM, workdir: Path, forks: prefork.ForkServer | None):
        self.target, self.llm, self.workdir, self.forks = target, llm, workdir, forks
        self.ledger = Ledger(llm.ledger_dir)

    def env(self, chain: Chain) -> dict[str, str]:
        extra = {"OPENAI_BASE_URL": self.llm.base_url, "OPENAI_API_KEY": chain.key}
        if chain.backend == "postgres":
            extra["DATABASE_URL"] = chain.location
        return self.target.python_env(**extra)

    def argv(self, chain: Chain, args: list[str]) -> list[str]:
        argv = [sys.executable, "-m", self.target.module("cli"), *args, "--thread", chain.thread]
        if chain.backend == "sqlite":
            argv += ["--sqlite", chain.location]
        return argv

    def start(self, chain: Chain, label: str, args: list[str]) -> proc.ManagedProcess | prefork.Child:
        return start_cli(self.target, self.forks, self.argv(chain, args)[3:], name=f"{chain.name}-{label}",
                         log_path=self.workdir / f"{chain.name}-{label}.log", env=self.env(chain), cwd=self.workdir)

    def observe(self, chain: Chain, label: str, args: list[str], process: proc.ManagedProcess,
                seconds: float) -> Snapshot:
        snap = Snapshot(label=label, argv=args, exit_code=process.returncode, log=process.output(),
                        seconds=seconds)
        entries = self.ledger.entries(caller=chain.key, since_id=chain.ledger_seen)
        if entries:
            chain.ledger_seen = entries[-1].id
        snap.calls = [node_of(e.prompt) or "?" for e in entries]
        snap.made_in = [sent_from(e) for e in entries]
        try:
            if chain.backend == "postgres":
                read_postgres(chain.location, chain.thread, snap)
            else:
                read_sqlite(chain.location, chain.thread, snap)
        except Exception as err:  # evidence that cannot be read is itself a finding
            snap.error = f"{type(err).__name__}: {err}"
        return snap

    def run(self, chains: list[Chain]) -> None:
        """Run every chain's steps in order, the chains side by side; spawn from this (main) thread."""
        pending = {chain.name: list(chain.steps) for chain in chains}
        running: dict[str, tuple] = {}
        by_name = {chain.name: chain for chain in chains}

        def start_next(chain: Chain) -> None:
            if pending[chain.name]:
                label, args, ok = pending[chain.name].pop(0)
                process = self.start(chain, label, args)
                running[chain.name] = (label, args, ok, process, time.monotonic(), proc.Watchdog(process.pid, idle_limit_s=IDLE_LIMIT_S, cpu_limit_s=CPU_LIMIT_S))

        for chain in chains:
            start_next(chain)
        try:
            while running:
                for name, (label, args, ok, process, started, watchdog) in list(running.items()):
                    chain = by_name[name]
                    if process.alive and not watchdog.stuck():
                        continue
                    del running[name]
                    elapsed = time.monotonic() - started
                    if process.alive:
                        process.kill()
                        snap = chain.snaps[label] = self.observe(chain, label, args, process, elapsed)
                        snap.stuck = watchdog.verdict
                        chain.stopped = f"`{' '.join(args)}` {watchdog.verdict}"
                        continue
                    process.stop()
                    snap = chain.snaps[label] = self.observe(chain, label, args, process, elapsed)
                    if snap.exit_code not in ok:
                        chain.stopped = f"`{' '.join(args)}` exited with status {snap.exit_code}"
                        continue
                    start_next(chain)
                time.sleep(0.01)
        finally:
            for label, args, ok, process, started, watchdog in running.values():
                process.kill()


@dataclass
class Scenario:
    pg: Chain
    kill: Chain
    sqlite: Chain
    early: Chain | None = None  # the run dies after fetch: its resume runs transform and report
    seconds: float = 0.0  # the whole scenario
    services_s: float = 0.0  # PostgreSQL, the course LLM and the fork server ready
    failure: CheckFailed | None = None

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the scenario could not run ({self.failure.summary})")
        return self


@pytest.fixture(scope="module")
def course_llm(tmp_path_factory):
    """The course LLM for this module (no Temporal needed): its own ledger, always stopped."""
    llm = CourseLLM(tmp_path_factory.mktemp("lab03-llm"), rules_files=[course.COURSE_TOML])
    try:
        llm.launch()
        yield llm
    finally:
        llm.stop()


@pytest.fixture(scope="module")
def scenario(postgres, course_llm, lab_target, tmp_path_factory) -> Scenario:
    started = time.monotonic()
    key = uuid.uuid4().hex[:8]
    workdir = tmp_path_factory.mktemp("lab03-run")
    crash = ["run", "--crash-after", "transform"]
    chains = Scenario(
        pg=Chain("pg", "postgres", f"report-{key}", f"lab-03pg-{key}", "",
                 [("run", crash, {1}), ("resume", ["resume"], {0}), ("resume-again", ["resume"], {0})]),
        kill=Chain("kill", "postgres", f"report-kill-{key}", f"lab-03kill-{key}", "",
                   [("run", crash + ["--crash-with", "kill"], {-9}), ("resume", ["resume"], {0})]),
        sqlite=Chain("sqlite", "sqlite", f"report-sqlite-{key}", f"lab-03sqlite-{key}",
                     str(workdir / "checkpoints.sqlite"), [("run", crash, {1}), ("resume", ["resume"], {0})]),
        early=Chain("early", "postgres", f"report-early-{key}", f"lab-03early-{key}", "",
                    [("run", ["run", "--crash-after", "fetch"], {1}), ("resume", ["resume"], {0})]),
    )
    forks = prefork.ForkServer(workdir, PRELOAD, env=lab_target.python_env()) if prefork.enabled() else None
    try:
        # PostgreSQL, the course LLM and the fork server start side by side.
        if forks:
            forks.launch()
        chains.pg.location = postgres.create_database(f"lab03_{key}_pg")
        chains.kill.location = postgres.create_database(f"lab03_{key}_kill")
        chains.early.location = postgres.create_database(f"lab03_{key}_early")
        course_llm.wait_ready()
        if forks:
            try:
                forks.wait_ready()
            except RuntimeError:  # only speed is lost: start each process with a plain exec
                forks.stop()
                forks = None
        chains.services_s = time.monotonic() - started
        Harness(lab_target, course_llm, workdir, forks).run([chains.pg, chains.kill, chains.sqlite, chains.early])
    except CheckFailed as failure:
        chains.failure = failure
    except Exception as err:  # a service that would not start
        chains.failure = CheckFailed(f"the lab's services did not start: {err}")
    finally:
        if forks:
            forks.stop()
    chains.seconds = time.monotonic() - started
    return chains


# --- diagnosis -----------------------------------------------------------------------------------

def last_exception(log: str) -> str | None:
    """The last exception line of a traceback ("psycopg.errors.UndefinedTable: relation ...")."""
    return student_error(log)


REVISIT_SEGFAULT = ("Exit status -11 is a segmentation fault (signal 11): the interpreter itself crashed, no Python "
                    "error to show. Measured with LangGraph 1.2 and langgraph-checkpoint-sqlite 3.1: under "
                    "durability \"async\" the SQLite saver's background write can meet its connection being "
                    "closed while sys.exit unwinds the `with` block, and sqlite3 crashes the process. With "
                    "durability=\"sync\" every write is done before the next step starts, and the crash is clean. "
                    + REVISIT_DURABILITY)


def process_failed(snap: Snapshot, what: str, expected: str) -> CheckFailed:
    """A student process ended the wrong way: say why, in the lab's terms."""
    if snap.stuck or snap.exit_code is None:
        return CheckFailed(f"`{' '.join(snap.argv)}` never finished: it {snap.stuck or 'was killed'}",
                           observed=f"the process ran {snap.seconds:.0f} s and was killed", expected=expected,
                           revisit="Something blocks: an input(), a lock, a connection that never answers.",
                           details=tail(snap.log))
    error = last_exception(snap.log) or f"exit status {snap.exit_code}"
    todo = unfinished(error, LAB)
    if todo:
        return todo
    known = [
        ('relation "checkpoints" does not exist',
         "PostgresSaver.setup() was never called, so the checkpoint tables do not exist in this fresh "
         "database. Call saver.setup() once after opening the saver (it is safe to call every time)."),
        ("'_put_checkpoint_fut'",
         "The graph has no checkpointer: compile() was called without one, and with durability=\"sync\" "
         "LangGraph 1.2 then fails waiting for a checkpoint write that never started. Compile with "
         "compile(checkpointer=saver), the saver you opened."),
        ("_GeneratorContextManager",
         "from_conn_string(...) returns a context manager, not a saver (the text's one-liner in §64.2.3 "
         "passes it straight to compile()). Open it with `with PostgresSaver.from_conn_string(url) as "
         "saver:` and compile inside the block."),
        ("Received no input for __start__",
         "LangGraph found no checkpoint to continue from on this thread. Resume with the same thread_id "
         "the run used (the --thread argument), and make sure the run saved checkpoints to the database."),
        ("ActiveSqlTransaction",
         "PostgresSaver.setup() creates an index CONCURRENTLY, which PostgreSQL refuses inside a "
         "transaction, and a psycopg connection opens one for every statement unless it is in autocommit "
         "mode. A connection you open yourself for PostgresSaver needs psycopg.connect(url, "
         "autocommit=True, prepare_threshold=0, row_factory=dict_row) (from_conn_string does that for you)."),
    ]
    if snap.exit_code == -11:
        return CheckFailed(f"{what}: the process died of a segmentation fault (exit status -11)"
                           + (f", after `CRASH ({snap.crash[0]}) after {snap.crash[1]}`" if snap.crash else ""),
                           observed=f"exit status -11 (SIGSEGV); the run used durability={snap.durability!r}",
                           expected=expected, revisit=REVISIT_SEGFAULT, details=tail(snap.log))
    revisit = next((advice for needle, advice in known if needle in (error or "") or needle in snap.log), None)
    if revisit is None and unreachable(snap.log):
        revisit = ("The process could not reach a server. cli.py reads the database URL from DATABASE_URL (the "
                   "grader sets it; with --sqlite FILE no server is needed), and llm.py the LLM from "
                   "OPENAI_BASE_URL: use those, not an address of your own.")
    return CheckFailed(f"{what}: {error}", observed=f"exit status {snap.exit_code}", expected=expected,
                       revisit=revisit or "Read the error above; run the same command yourself (see the README) "
                                          "to see it whole.", details=tail(snap.log))


def require_crash(chain: Chain, how: str, owner: bool = False, durability: str = "need") -> Snapshot:
    """The run step of a chain: it must have died at the crash point, the way asked, and (unless
    durability="skip") with durability "sync", else its checkpoints after the crash are luck.

    The check that owns the run (owner) reports a wrong crash; the one that owns durability
    (durability="own") reports a wrong mode; the others say they could not check, and why.
    """
    try:
        run = _require_crash(chain, how)
    except NotChecked:
        raise
    except CheckFailed as failure:
        if owner:
            raise
        raise NotChecked(f"not checked: {failure.summary[:1].lower()}{failure.summary[1:]}") from None
    if durability != "skip":
        failure = durability_failure(run, chain)
        if failure and durability == "own":
            raise failure
        if failure:
            raise NotChecked(f"not checked: {failure.summary[:1].lower()}{failure.summary[1:]}, so what the "
                             "resume did proves nothing (see checkpoints-after-crash and sigkill-sync)")
    return run


def shown_durability(mode: str | None) -> str:
    return "none (LangGraph's default, \"async\")" if mode in (None, "None") else f"\"{mode}\""


def durability_failure(run: Snapshot, chain: Chain) -> CheckFailed | None:
    """The crashed run streamed with a durability other than "sync" (the course's crash helper names
    it): whether transform's checkpoint survives the crash is then a race, whatever this run shows."""
    mode = run.durability
    if mode in ("sync", None):  # None: no CRASH line with a mode (the crash itself is judged elsewhere)
        return None
    where = "PostgreSQL" if chain.backend == "postgres" else f"the SQLite file {Path(chain.location).name}"
    got = run.shapes()
    if not got:
        what = f"No checkpoint reached {where} before the crash"
    elif got == EXPECTED_AFTER_CRASH[:-1]:
        what = f"Transform's checkpoint did not reach {where} before the crash"
    elif got == EXPECTED_AFTER_CRASH:
        what = f"Transform's checkpoint reached {where} this time, by luck"
    else:
        what = f"The checkpoints in {where} after the crash are left to chance"
    mode_said = "the run passed no durability (LangGraph's default, \"async\")" if mode == "None" else \
        f"the run used durability=\"{mode}\""
    observed = f"{len(got)} checkpoint(s) after the crash: {run.describe()}; durability {shown_durability(mode)}"
    revisit = REVISIT_DURABILITY
    if run.exit_code == -11:
        observed += "; then the process died of a segmentation fault (exit status -11)"
        revisit = REVISIT_SEGFAULT
    return CheckFailed(
        f"{what}: {mode_said}", observed=observed,
        expected="durability=\"sync\": transform's checkpoint is in the database before report starts, after every "
                 "crash (4 checkpoints: steps -1, 0, 1, 2)",
        revisit=revisit, details=tail(run.log, 3))


def _require_crash(chain: Chain, how: str) -> Snapshot:
    run = chain.snap("run")
    want_code = -9 if how == "kill" else 1
    crash = run.crash
    if crash == (how, "transform") and (run.exit_code == want_code
                                         or (run.exit_code == -11 and run.durability not in ("sync", None))):
        return run  # a segfault while sys.exit unwinds under async durability: durability_failure says so
    if run.exit_code == 0:
        raise CheckFailed(
            "The run finished instead of crashing after transform",
            observed=f"`{' '.join(run.argv)}` exited 0; nodes that called the LLM: {', '.join(run.calls) or 'none'}",
            expected=f"the crash helper stops the process right after transform "
                     f"({'SIGKILL' if how == 'kill' else 'exit status 1'})",
            revisit="cmd_run must run the graph through crash.run(app, ..., crash_after=args.crash_after, "
                    "crash_with=args.crash_with), and the middle node must be named \"transform\".",
            details=tail(run.log))
    if crash is None or run.exit_code != want_code:
        raise process_failed(run, "The run failed before the crash point",
                             f"exit {'by SIGKILL (-9)' if how == 'kill' else 'status 1'} from the crash helper, "
                             "after fetch and transform ran")
    raise CheckFailed("The crash did not come where it was asked for",
                      observed=f"CRASH ({crash[0]}) after {crash[1]}",
                      expected=f"CRASH ({how}) after transform", details=tail(run.log))


def ledger_failure(nodes_seen: list[str], expected: list[str], where: str) -> CheckFailed | None:
    """The nodes that called the LLM (from the ledger) against the ones expected, in order."""
    if nodes_seen == expected:
        return None
    counts, wanted = Counter(nodes_seen), Counter(expected)
    if counts["?"]:
        return CheckFailed(
            f"{counts['?']} LLM call(s) {where} do not say which node made them",
            observed=f"ledger: {', '.join(nodes_seen)}",
            expected=", ".join(expected) or "no call",
            revisit="Call the LLM only through llm.ask(node_name, text): it tags each prompt with the node, "
                    "which is how the grader counts node executions.")
    extra = [n for n in NODES if counts[n] > wanted[n]]
    missing = [n for n in NODES if counts[n] < wanted[n]]
    observed = (f"ledger: {', '.join(nodes_seen) or 'no call'}" + (f"  (extra: {', '.join(extra)})" if extra else "")
                + (f"  (missing: {', '.join(missing)})" if missing else ""))
    if extra and wanted["report"] == 1 and not wanted["fetch"]:  # a resume that re-ran finished nodes
        rerun = [n for n in extra if n != "report"]
        if "fetch" not in rerun:  # it continued the thread, from a checkpoint before transform's
            return CheckFailed(
                f"The resume ran {' and '.join(rerun)} again: its checkpoint was not in the database when the "
                "run died",
                observed=observed, expected="report only: fetch and transform are done and saved in the checkpoint",
                revisit="The resume continued the thread (fetch did not run again), from the last checkpoint "
                        "it found: the one before transform's. " + REVISIT_DURABILITY)
        return CheckFailed(
            f"The resume ran {' and '.join(rerun)} again: their LLM was called a second time",
            observed=observed, expected="report only: fetch and transform are done and saved in the checkpoint",
            revisit="Did resume pass the original input instead of None? " + REVISIT_RESUME)
    return CheckFailed(f"The LLM calls {where} are not the expected ones", observed=observed,
                       expected=", ".join(expected) or "no call",
                       revisit="Each node calls llm.ask(\"<its name>\", ...) exactly once; " + REVISIT_RESUME)


def count_failure(snap: Snapshot, expected: list[tuple], moment: str, chain: Chain) -> CheckFailed | None:
    """The checkpointer's list after a process, against the exact shape expected."""
    if snap.error:
        return CheckFailed(f"The grader could not read the checkpoints {moment}: {snap.error}",
                           revisit="Were the checkpoint tables created by the saver (setup())?")
    got = snap.shapes()
    if got == expected:
        return None
    where = "PostgreSQL" if chain.backend == "postgres" else f"the SQLite file {Path(chain.location).name}"
    observed = f"{len(got)} checkpoint(s) for thread {chain.thread!r}: {snap.describe()}"
    want = f"exactly {len(expected)}: " + ", ".join(f"step {s} ({src})" for s, src in expected)
    if not snap.tables:
        return CheckFailed(
            f"{where} holds no checkpoint table at all {moment}: nothing was saved there",
            observed=observed, expected=want,
            revisit="Compile the graph with the saver you opened: compile(checkpointer=saver). Without a "
                    "checkpointer, or with an InMemorySaver, checkpoints live in the process and die "
                    "with it. " + REVISIT_DURABILITY)
    if not got:
        return CheckFailed(
            f"No checkpoint reached {where} {moment}",
            observed=observed + "; the checkpoint tables exist, so a saver was opened on this database",
            expected=want,
            revisit="Either the graph is not compiled with that saver (compile(checkpointer=saver); "
                    "with no checkpointer, or an InMemorySaver, checkpoints stay in the process and die "
                    "with it), or it ran with durability=\"exit\", which writes only when a run returns, "
                    "and a crashed run never returns. " + REVISIT_DURABILITY)
    if got == expected[:-1]:
        return CheckFailed(
            f"The last checkpoint before the crash is missing {moment}",
            observed=observed, expected=want,
            revisit="The process died while that checkpoint was still being written in the background: "
                    "that is durability=\"async\" (the default when you pass none). " + REVISIT_DURABILITY)
    return CheckFailed(f"The checkpoints {moment} are not the expected {len(expected)}" if len(got) != len(expected)
                       else f"The {len(got)} checkpoints {moment} are not the expected steps and sources",
                       observed=observed, expected=want, revisit=REVISIT_N_PLUS_2)


REVISIT_FORK_COPY = ("A checkpoint of source \"fork\" is LangGraph's copy of a checkpoint a run was told to start "
                     "from: a config that names a checkpoint_id makes invoke() a replay of that checkpoint (it "
                     "copies it and runs from the copy, one step later). To continue a thread, pass only its "
                     "thread_id: invoke(None, {\"configurable\": {\"thread_id\": T}}) continues from the latest "
                     "checkpoint, and writes no copy.")


def extra_checkpoints(run: Snapshot, resume: Snapshot) -> str | None:
    """What the checkpoints the resume added beyond report's say it did (None: nothing to say)."""
    known = {c.id for c in run.library}
    added = [c for c in resume.library if c.id not in known]
    sources = [c.source for c in added]
    if len(added) <= 1 and not {"fork", "input", "update"} & set(sources):
        return None
    said = "The resume added " + ", ".join(f"step {c.step} ({c.source})" for c in added) + "."
    if "input" in sources:
        return f"{said} An input checkpoint: the resume started the thread over with a new input. {REVISIT_RESUME}"
    if "fork" in sources:
        return f"{said} {REVISIT_FORK_COPY}"
    if "update" in sources:
        return (f"{said} An update checkpoint: update_state wrote into the thread; the nodes did not run "
                f"there. A resume writes nothing by hand: it lets LangGraph run what is left. {REVISIT_RESUME}")
    return f"{said} {REVISIT_RESUME}"


def explained(failure: CheckFailed | None, run: Snapshot, resume: Snapshot) -> CheckFailed | None:
    """A wrong count after the resume, with what the checkpoints the resume added say it did."""
    extra = extra_checkpoints(run, resume) if failure else None
    if extra:
        failure.revisit = extra + " " + REVISIT_N_PLUS_2
    return failure


def order_failure(snap: Snapshot, moment: str) -> CheckFailed | None:
    ids = [c.id for c in snap.library]
    if ids != sorted(ids) or len(set(ids)) != len(ids):
        return CheckFailed(f"The checkpoint ids {moment} do not increase step by step",
                           observed=", ".join(f"step {c.step}: {c.id}" for c in snap.library),
                           expected="each checkpoint id greater than the one before (they are time-ordered)")
    parents = [c.parent for c in snap.library]
    if parents != [None] + ids[:-1]:
        return CheckFailed(f"The checkpoints {moment} do not form one chain",
                           observed=", ".join(f"step {c.step} <- {c.parent}" for c in snap.library),
                           expected="each checkpoint's parent is the one before it: one thread, one history",
                           revisit=REVISIT_RESUME)
    return None


# --- the checks ----------------------------------------------------------------------------------

@pytest.mark.check("crash-happened")
def test_run_really_crashes_after_transform(scenario, evidence):
    """Given a fresh database,
    When `cli run --crash-after transform` runs as its own process,
    Then it exits with status 1 at the crash point, after fetch and transform called the LLM
    and before report did."""
    scenario.require()
    run = require_crash(scenario.pg, "exit", owner=True, durability="skip")
    evidence.update(exit=run.exit_code, llm_calls=",".join(run.calls) or "none",
                    services=f"{scenario.services_s:.1f}s", scenario=f"{scenario.seconds:.1f}s")
    failure = ledger_failure(run.calls, ["fetch", "transform"], "before the crash")
    if failure:
        failure.summary = "Before the crash, fetch and transform should each call the LLM once, report never"
        failure.revisit = ("Each node calls llm.ask(\"<its name>\", ...) exactly once and returns a partial "
                           "state update; the edges are START -> fetch -> transform -> report -> END.")
        raise failure


@pytest.mark.check("checkpoints-after-crash")
def test_four_checkpoints_after_the_crash(scenario, evidence):
    """Given the crashed run,
    Then the checkpointer lists exactly 4 checkpoints for the thread: the input at step -1,
    then the loop at steps 0, 1 and 2 (transform's, saved before the crash)."""
    scenario.require()
    require_crash(scenario.pg, "exit", durability="own")
    run = scenario.pg.snap("run")
    evidence["checkpoints"] = len(run.library)
    failure = count_failure(run, EXPECTED_AFTER_CRASH, "after the crash", scenario.pg)
    if failure:
        raise failure


@pytest.mark.check("resume-runs-report-only")
def test_resume_in_a_new_process_runs_only_report(scenario, evidence):
    """Given the crashed run's checkpoints,
    When `cli resume` runs in a new process,
    Then it completes, only report calls the LLM, and the final state holds the report."""
    scenario.require()
    require_crash(scenario.pg, "exit")
    resume = scenario.pg.snap("resume")
    evidence.update(llm_calls=",".join(resume.calls) or "none", resume_s=f"{resume.seconds:.1f}")
    if resume.exit_code != 0:
        raise process_failed(resume, "The resume failed", "exit status 0 after running report")
    failure = ledger_failure(resume.calls, ["report"], "made by the resume process")
    if failure:
        raise failure
    report = (resume.final or {}).get("report")
    if not isinstance(report, str) or not report.strip():
        raise CheckFailed("The final state holds no report",
                          observed=f"state keys in the last checkpoint: {sorted(resume.final or {})}",
                          expected="a non-empty string under \"report\", written by the report node",
                          revisit="The report node returns {\"report\": <the LLM's reply>}; ReportState "
                                  "declares report: str.")


@pytest.mark.check("llm-once-per-node")
def test_each_node_called_the_llm_once_across_both_processes(scenario, evidence):
    """Given the crashed run and its resume (two processes),
    Then the ledger shows fetch, transform and report each called the LLM exactly once, each call
    sent by its own node while it ran (the origin every request carries)."""
    scenario.require()
    require_crash(scenario.pg, "exit")
    run, resume = scenario.pg.snap("run"), scenario.pg.snap("resume")
    if resume.exit_code != 0:
        raise NotChecked(f"not checked: the resume failed (exit status {resume.exit_code})")
    counts = Counter(run.calls + resume.calls)
    evidence.update({f"llm_{node}": counts[node] for node in NODES})
    failure = attribution_failure([run, resume])
    if failure:
        raise failure
    started_over = "fetch" in resume.calls  # the resume ran the thread from START again
    for node in NODES:
        if counts[node] != 1:
            why, revisit = "", "Each node calls llm.ask(\"<its name>\", ...) exactly once."
            if counts[node] > 1 and node in resume.calls and started_over:
                why, revisit = ": did resume pass the original input instead of None?", REVISIT_RESUME
            elif counts[node] > 1 and node in resume.calls:
                why = f": {node}'s checkpoint was not in the database when the run died"
                revisit = "The resume continued from the last checkpoint it found. " + REVISIT_DURABILITY
            raise CheckFailed(
                f"{node}'s LLM was called {counts[node]} time(s) across the two processes{why}",
                observed=f"run: {', '.join(run.calls) or 'no call'}; resume: {', '.join(resume.calls) or 'no call'}",
                expected="fetch, transform (run), then report (resume): each node once",
                revisit=revisit)


def attribution_failure(snaps: list[Snapshot]) -> CheckFailed | None:
    """Every LLM call was sent while the node it is tagged with ran (the request's origin says which
    LangGraph node sent it): a node's call made by another node, or outside the graph, is not that
    node's execution."""
    for snap in snaps:
        for tag, node in zip(snap.calls, snap.made_in):
            if node is None or node == tag:
                continue
            where = f"while the node {node!r} ran" if node else "outside any graph node"
            return CheckFailed(
                f"The LLM call tagged {tag!r} was made {where}",
                observed=f"during `{' '.join(snap.argv)}`: " + ", ".join(
                    f"{t} (sent by {n or 'no node'})" if n is not None else t
                    for t, n in zip(snap.calls, snap.made_in)),
                expected="each node's one LLM call sent by that node, while it runs: fetch's by fetch, "
                         "transform's by transform, report's by report",
                revisit="A node's work is what LangGraph checkpoints after that node: a call made early, in "
                        "another node (and its reply kept for later), or outside the graph, is not saved as "
                        "that node's step, and a crash or a resume no longer means what the lab measures. "
                        "Each node calls ask(\"<its name>\", ...) itself, once.")
    return None


@pytest.mark.check("five-checkpoints")
def test_five_checkpoints_in_order_after_the_resume(scenario, evidence):
    """Given the resumed run,
    Then the thread has exactly 5 checkpoints, steps -1, 0, 1, 2, 3 in order, with increasing
    ids, each the parent of the next, and the first four are the ones saved before the crash;
    and a run that died after fetch, once resumed (transform and report), holds the same 5."""
    scenario.require()
    require_crash(scenario.pg, "exit")
    run, resume = scenario.pg.snap("run"), scenario.pg.snap("resume")
    if resume.exit_code != 0:
        raise NotChecked(f"not checked: the resume failed (exit status {resume.exit_code})")
    evidence["checkpoints"] = len(resume.library)
    failure = explained(count_failure(resume, EXPECTED_FINISHED, "after the resume", scenario.pg), run,
                        resume) or order_failure(resume, "after the resume")
    if failure:
        raise failure
    before = [c.id for c in run.library]
    if [c.id for c in resume.library[:4]] != before:
        raise CheckFailed("The resume did not continue from the checkpoints saved before the crash",
                          observed=f"before: {before}; after: {[c.id for c in resume.library]}",
                          expected="the same 4 checkpoints, then one more (step 3, after report)",
                          revisit=REVISIT_RESUME)
    failure = longer_resume_failure(scenario.early)
    if failure:
        raise failure


def longer_resume_failure(chain: Chain) -> CheckFailed | None:
    """A run that died after fetch leaves 3 checkpoints; its resume runs transform and report, and the
    finished thread holds all 5: transform's saved before report started, as the run's were."""
    run = chain.snaps.get("run")
    resume = chain.snaps.get("resume")
    if run is None or run.crash is None or run.crash[1] != "fetch" or run.exit_code != 1:
        return process_failed(run, "the run that should die after fetch", "exit status 1 right after fetch") \
            if run is not None else CheckFailed(f"The run that should die after fetch never ran ({chain.stopped})")
    if resume is None or resume.exit_code != 0:
        return process_failed(resume, "the resume of the run that died after fetch", "exit status 0") \
            if resume is not None else CheckFailed(f"The resume after fetch never ran ({chain.stopped})")
    if resume.shapes() == EXPECTED_FINISHED:
        return None
    kept_last_only = [(-1, "input"), (0, "loop"), (1, "loop"), (3, "loop")]
    if resume.shapes() == kept_last_only:
        return CheckFailed(
            "The resume that ran transform and report saved only its last checkpoint",
            observed=f"the run died after fetch with {run.describe()}; after the resume: {resume.describe()} "
                     "(no step 2, transform's)",
            expected="5 checkpoints, steps -1..3: the resume saves transform's step before report starts",
            revisit="A resume runs the rest of the thread, and a crash during it must find every node it finished "
                    "saved. Pass the run's durability to the resume's invoke too (durability=DURABILITY, \"sync\"): "
                    "with \"exit\" a resume saves only when it returns, so a crash in report would lose transform "
                    "(a resume with report alone left hides it). " + REVISIT_DURABILITY)
    return count_failure(resume, EXPECTED_FINISHED, "after the resume of a run that died after fetch", chain)


@pytest.mark.check("resume-again-noop")
def test_resuming_a_finished_thread_changes_nothing(scenario, evidence):
    """Given the finished thread,
    When `cli resume` runs once more in a new process,
    Then no node calls the LLM and no checkpoint is added."""
    scenario.require()
    require_crash(scenario.pg, "exit")
    first, again = scenario.pg.snap("resume"), scenario.pg.snap("resume-again")
    evidence.update(llm_calls=len(again.calls), new_checkpoints=len(again.library) - len(first.library))
    if again.exit_code != 0:
        raise process_failed(again, "Resuming the finished thread failed", "exit status 0, nothing run")
    if again.calls or [c.id for c in again.library] != [c.id for c in first.library]:
        raise CheckFailed(
            "Resuming a finished thread did work again",
            observed=f"LLM calls: {', '.join(again.calls) or 'none'}; checkpoints {len(first.library)} -> "
                     f"{len(again.library)}",
            expected="no LLM call and no new checkpoint: the last checkpoint has nothing left to run",
            revisit=REVISIT_FORK_COPY if "fork" in [c.source for c in again.library[len(first.library):]]
            else REVISIT_RESUME)


@pytest.mark.check("sql-confirms")
def test_sql_on_the_checkpoint_tables_confirms_the_counts(scenario, evidence):
    """Then plain SQL on the checkpoints table (not the library) finds the same rows:
    4 after the crash and 5 after the resume, same ids, steps and sources."""
    scenario.require()
    require_crash(scenario.pg, "exit")
    for label, expected in (("run", EXPECTED_AFTER_CRASH), ("resume", EXPECTED_FINISHED)):
        snap = scenario.pg.snap(label)
        if label == "resume" and snap.exit_code != 0:
            raise NotChecked(f"not checked: the resume failed (exit status {snap.exit_code}); "
                             f"after the crash SQL found the expected {len(EXPECTED_AFTER_CRASH)} rows")
        evidence[f"sql_{label}"] = len(snap.sql)
        rows = ", ".join(f"step {c.step} ({c.source})" for c in snap.sql) or "none"
        if snap.sql != snap.library:
            raise CheckFailed(
                f"SQL on the checkpoints table disagrees with checkpointer.list() after the {label}",
                observed=f"SQL: {len(snap.sql)} row(s): {rows}; list(): {len(snap.library)}",
                expected="the same rows both ways, in the same order",
                revisit="Only the default namespace (checkpoint_ns = '') is counted: no subgraphs here.")
        if snap.shapes("sql") != expected:
            raise CheckFailed(
                f"SQL on the checkpoints table finds {len(snap.sql)} row(s) after the {label}, not {len(expected)}"
                if len(snap.sql) != len(expected) else
                f"SQL on the checkpoints table finds {len(snap.sql)} rows after the {label}, but not the steps "
                "and sources expected",
                observed=f"SELECT ... FROM checkpoints WHERE thread_id = {scenario.pg.thread!r}: {rows}",
                expected=f"{len(expected)} rows: " + ", ".join(f"step {st} ({src})" for st, src in expected),
                revisit=REVISIT_N_PLUS_2)


@pytest.mark.check("sigkill-sync")
def test_sigkill_after_transform_keeps_its_checkpoint(scenario, evidence):
    """Given durability "sync",
    When the run is SIGKILLed right after transform (no cleanup at all),
    Then 4 checkpoints are in PostgreSQL, and a resume in a new process runs report only,
    leaving 5."""
    scenario.require()
    chain = scenario.kill
    run = require_crash(chain, "kill", owner=True, durability="own")
    evidence.update(exit=run.exit_code, checkpoints=len(run.library))
    failure = count_failure(run, EXPECTED_AFTER_CRASH, "after the SIGKILL", chain)
    if failure:
        raise failure
    resume = chain.snap("resume")
    if resume.exit_code != 0:
        raise process_failed(resume, "The resume after the SIGKILL failed", "exit status 0 after running report")
    failure = (ledger_failure(resume.calls, ["report"], "made by the resume after the SIGKILL")
               or ledger_failure(run.calls + resume.calls, NODES, "across the killed run and its resume")
               or explained(count_failure(resume, EXPECTED_FINISHED, "after the resume", chain), run, resume))
    if failure:
        raise failure


@pytest.mark.check("sqlite-part")
def test_sqlite_saver_gives_the_same_counts(scenario, evidence):
    """Part 2: the same crash and resume with SqliteSaver on a file (`--sqlite FILE`):
    4 checkpoints after the crash, 5 after the resume (library and SQL agree), each node
    calling the LLM once."""
    scenario.require()
    chain = scenario.sqlite
    run = require_crash(chain, "exit", owner=True, durability="own")
    evidence["checkpoints_after_crash"] = len(run.library)
    failure = count_failure(run, EXPECTED_AFTER_CRASH, "after the crash", chain)
    if failure:
        raise failure
    resume = chain.snap("resume")
    if resume.exit_code != 0:
        raise process_failed(resume, "The SQLite resume failed", "exit status 0 after running report")
    evidence["checkpoints"] = len(resume.library)
    failure = (ledger_failure(resume.calls, ["report"], "made by the SQLite resume")
               or explained(count_failure(resume, EXPECTED_FINISHED, "after the SQLite resume", chain), run, resume)
               or order_failure(resume, "after the SQLite resume"))
    if failure:
        raise failure
    for snap in (run, resume):
        if snap.sql != snap.library:
            raise CheckFailed("SQL on the SQLite file disagrees with the checkpointer",
                              observed=f"SQL {len(snap.sql)} rows, list() {len(snap.library)}",
                              expected="the same rows", revisit=REVISIT_N_PLUS_2)
