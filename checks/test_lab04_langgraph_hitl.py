"""Lab 04 autograder: the research agent pauses for a human, and its history can be replayed and forked.

Scenario, run once for the module against a fresh PostgreSQL, course LLM and course web: three
chains of real processes side by side, each with its own thread, database, LLM key and web caller:
  main       --pause before:     run -> approve -> replay (from after search) -> fork (new question)
  edit       --pause before:     run -> approve --summary EDIT
  interrupt  --pause interrupt:  run -> approve --summary EDIT   (interrupt() + Command(resume=...))
Every step is `python -m <lab>.cli ...`, a new process, forked from a warm interpreter that has
already imported langgraph (labkit.prefork; LAB_PREFORK=0 starts each with a plain exec instead).
After every process the grader gathers its evidence from outside the student's code: the course
LLM's ledger (which node called the LLM, with which prompt), the course web's ledger (searches),
the checkpointer's own list() on a fresh connection, and plain SQL on the checkpoint tables
(checkpoints, and checkpoint_writes for the interrupts and resume values).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labkit import course, prefork, proc
from labkit.feedback import CheckFailed, NotChecked, student_error, tail, unfinished, unreachable
from labkit.llm import Ledger
from labkit.services import CourseLLM
from labkit.web import CourseWeb, WebLedger
from scenario_lab04_langgraph_hitl import PRELOAD, QUERY, checkpoint_rows, cli_env, start_cli, tagged_node

LAB = "04"
IDLE_LIMIT_S = 20.0  # a student process that sleeps this long, all but idle, is stuck (see Watchdog)
CPU_LIMIT_S = 60.0  # ... or that used this much CPU (one CLI step needs 0.1-3 s, forked or not)
# A hang guard for the grader itself, never a verdict: each student process ends, or the Watchdog
# judges it stuck by its progress, whatever the machine's speed. A plain exec at a quarter core
# under load took 135 s for the whole scenario (the course-wide 120 s stopped a correct solution).
HANG_S = 600.0

FORK_QUERY = "How does the surface code protect a logical qubit?"
EDIT_BEFORE = "Reviewed: error correction trades hundreds of physical qubits for one reliable logical qubit."
EDIT_INTERRUPT = "Reviewed via Command: below threshold, bigger surface-code patches mean fewer logical errors."

PAUSED = [(-1, "input"), (0, "loop"), (1, "loop"), (2, "loop")]
FINISHED = PAUSED + [(3, "loop")]
FINISHED_WITH_UPDATE = PAUSED + [(3, "update"), (4, "loop")]
REPLAYED = [(2, "fork"), (3, "loop")]  # what a replay from after search adds (the README's table)
FORKED = [(2, "update"), (3, "loop")]  # what a fork from after search adds

REVISIT_COUNTS = ("§64.2.3: one checkpoint for the input (step -1), one when START hands it over (step 0), then one "
                  "per node. Paused before review: 4 (steps -1, 0, 1, 2). Finished: 5. An update_state adds one "
                  "of its own (source \"update\").")
REVISIT_PAUSE = ("Pause style 1 (§64.2.3): compile(..., interrupt_before=[\"review\"]) stops the run before review "
                 "and invoke() returns; the process exits; nothing is waiting in memory. The paused thread is its "
                 "checkpoints.")
REVISIT_RESUME = ("A decision continues the paused thread: invoke(None, config) with the same thread_id (None = no "
                  "new input). Any input starts the thread over: search and summarize run again, and it pauses "
                  "before review again.")
REVISIT_INTERRUPT = ("Pause style 2: review calls interrupt(payload); the run stops inside the node and the payload "
                     "is saved with the checkpoint. invoke(Command(resume=decision), config) runs review again from "
                     "its first line, and this time interrupt() returns the decision. invoke(None, config) has no "
                     "decision to give: review just interrupts again.")
REVISIT_REPLAY = ("Replay = invoke(None, config) where config names a past checkpoint "
                  "({\"configurable\": {\"thread_id\": T, \"checkpoint_id\": ID}}). LangGraph does not re-use "
                  "what happened after that checkpoint: every node downstream runs again (summarize calls the "
                  "LLM again) and is saved as a new branch. Passing an input instead starts over from START.")
REVISIT_FORK = ("Fork = update_state(past_config, values) then invoke(None, <the config it returns>). update_state "
                "writes a new checkpoint (source \"update\") whose parent is the past checkpoint; the run continues "
                "from it. invoke(new_input, thread config) is not a fork: it continues the thread's latest "
                "checkpoint and starts over from START.")


pytestmark = pytest.mark.timeout(HANG_S)  # the scenario runs inside the first check

# --- evidence ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    id: str
    parent: str | None
    step: int | None
    source: str | None
    next: tuple[str, ...] = ()  # the nodes this checkpoint would run next (its branch:to:* channels)
    values: dict = field(default_factory=dict, compare=False)

    def shape(self) -> tuple:
        return (self.step, self.source)

    def row(self) -> tuple:
        return (self.id, self.parent, self.step, self.source)

    def same_as(self, other: Checkpoint) -> bool:
        return self.row() == other.row() and self.next == other.next and self.values == other.values

    @property
    def status(self):
        return self.values.get("status")

    @property
    def summary(self):
        return self.values.get("summary")

    @property
    def messages(self) -> list[tuple[str, str]]:
        return self.values.get("messages") or []

    @property
    def question(self) -> str | None:
        asked = [content for kind, content in self.messages if kind == "human"]
        return asked[-1] if asked else None

    def describe(self) -> str:
        return (f"step {self.step} ({self.source}), next={list(self.next) or 'nothing'}, "
                f"status={self.status!r}")


@dataclass
class Snapshot:
    """What the grader saw when one student process ended."""

    label: str
    argv: list[str]
    exit_code: int | None
    log: str
    seconds: float
    calls: list[tuple[str, str]] = field(default_factory=list)  # (node, prompt) of each LLM call
    # per call, the LangGraph node running when the request was sent (labkit.attribution): None when the
    # request carried no origin (not judged), "" when it was sent outside any node
    made_in: list[str | None] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)  # queries searched on the course web
    tables: bool = False
    library: list[Checkpoint] = field(default_factory=list)  # saver.list(thread), oldest first
    sql: list[tuple] = field(default_factory=list)  # SELECT ... FROM checkpoints ORDER BY checkpoint_id
    interrupts: list[tuple[str, object]] = field(default_factory=list)  # (checkpoint id, value) from checkpoint_writes
    resumes: list[tuple[str, object]] = field(default_factory=list)
    error: str | None = None
    stuck: str | None = None  # why the grader killed the process (see Watchdog)

    @property
    def nodes(self) -> list[str]:
        return [node for node, _ in self.calls]

    @property
    def head(self) -> Checkpoint | None:
        """The thread's latest checkpoint (what get_state(thread) reads)."""
        return self.library[-1] if self.library else None

    def shapes(self) -> list[tuple]:
        return [c.shape() for c in self.library]

    def describe(self) -> str:
        return ", ".join(f"step {c.step} ({c.source})" for c in self.library) or "none"

    def by_id(self) -> dict[str, Checkpoint]:
        return {c.id: c for c in self.library}


@dataclass
class Step:
    label: str
    args: list[str] | Callable[[Chain], list[str]]  # a callable is asked when the step starts


@dataclass
class Chain:
    name: str
    pause: str  # "before" | "interrupt"
    thread: str
    key: str  # the LLM key and the web caller: the ledgers' caller
    steps: list[Step]
    location: str = ""  # DATABASE_URL
    snaps: dict[str, Snapshot] = field(default_factory=dict)
    stopped: str | None = None
    ledger_seen: int = 0
    web_seen: int = 0

    def snap(self, label: str) -> Snapshot:
        found = self.snaps.get(label)
        if found is None:
            raise NotChecked(f"not checked: the `{label}` step of the {self.name} thread never ran"
                             + (f" ({self.stopped})" if self.stopped else ""))
        return found


def simple_values(channel_values: dict) -> dict:
    values = {k: v for k, v in channel_values.items() if k in ("status", "summary", "sources")}
    values["messages"] = [(getattr(m, "type", type(m).__name__), str(getattr(m, "content", m)))
                          for m in channel_values.get("messages") or []]
    return values


def next_nodes(channel_values: dict) -> tuple[str, ...]:
    """What a checkpoint runs next, read from its channels: START's input, or the nodes an edge triggered
    (LangGraph 1.x writes an edge to the channel "branch:to:<node>")."""
    if "__start__" in channel_values:
        return ("__start__",)
    return tuple(sorted(k.removeprefix("branch:to:") for k in channel_values if k.startswith("branch:to:")))


def read_postgres(url: str, thread: str, snap: Snapshot) -> None:
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    with psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row) as conn:
        snap.tables = conn.execute("SELECT to_regclass('public.checkpoints') IS NOT NULL AS t").fetchone()["t"]
        if not snap.tables:
            return
        snap.sql = checkpoint_rows(conn, [thread])[thread]
        saver = PostgresSaver(conn)
        writes = conn.execute(
            "SELECT checkpoint_id, channel, type, blob FROM checkpoint_writes "
            "WHERE thread_id = %s AND checkpoint_ns = '' AND channel IN ('__interrupt__', '__resume__') "
            "ORDER BY checkpoint_id, task_id, idx", (thread,)).fetchall()
        for w in writes:
            value = saver.serde.loads_typed((w["type"], bytes(w["blob"]))) if w["blob"] is not None else None
            (snap.interrupts if w["channel"] == "__interrupt__" else snap.resumes).append((w["checkpoint_id"], value))
        tuples = list(saver.list({"configurable": {"thread_id": thread}}))[::-1]
        snap.library = [
            Checkpoint(id=t.config["configurable"]["checkpoint_id"],
                       parent=(t.parent_config or {}).get("configurable", {}).get("checkpoint_id"),
                       step=t.metadata.get("step"), source=t.metadata.get("source"),
                       next=next_nodes(t.checkpoint["channel_values"]),
                       values=simple_values(t.checkpoint["channel_values"]))
            for t in tuples]


# --- the scenario --------------------------------------------------------------------------------

class Harness:
    def __init__(self, target, llm: CourseLLM, web: CourseWeb, workdir: Path, forks: prefork.ForkServer | None):
        self.target, self.llm, self.web, self.workdir, self.forks = target, llm, web, workdir, forks
        self.ledger = Ledger(llm.ledger_dir)
        self.web_ledger = WebLedger(web.ledger_dir)

    def env(self, chain: Chain) -> dict[str, str]:
        return cli_env(self.target, self.llm, self.web, chain.key, chain.location, LAB04_PAUSE=chain.pause)

    def start(self, chain: Chain, label: str, args: list[str]):
        return start_cli(self.target, self.forks, self.target.module("cli"), args, name=f"{chain.name}-{label}",
                         log_path=self.workdir / f"{chain.name}-{label}.log", env=self.env(chain), cwd=self.workdir,
                         student=True)

    def observe(self, chain: Chain, label: str, args: list[str], process, seconds: float) -> Snapshot:
        snap = Snapshot(label=label, argv=args, exit_code=process.returncode, log=process.output(), seconds=seconds)
        entries = self.ledger.entries(caller=chain.key, since_id=chain.ledger_seen)
        if entries:
            chain.ledger_seen = entries[-1].id
        snap.calls = [(tagged_node(e.prompt) or "?", e.prompt) for e in entries]
        snap.made_in = [None if getattr(e, "origin", None) is None else (e.origin.get("node") or "")
                        for e in entries]
        searches = self.web_ledger.entries(caller=chain.key, kind="search", since_id=chain.web_seen)
        if searches:
            chain.web_seen = searches[-1].id
        snap.searches = [e.query or "" for e in searches]
        try:
            read_postgres(chain.location, chain.thread, snap)
        except Exception as err:  # evidence that cannot be read is itself a finding
            snap.error = f"{type(err).__name__}: {err}"
        return snap

    def run(self, chains: list[Chain]) -> None:
        """Every chain's steps in order, the chains side by side; spawned from this (main) thread."""
        pending = {chain.name: list(chain.steps) for chain in chains}
        running: dict[str, tuple] = {}
        by_name = {chain.name: chain for chain in chains}

        def start_next(chain: Chain) -> None:
            while pending[chain.name]:
                step = pending[chain.name].pop(0)
                try:
                    args = step.args(chain) if callable(step.args) else list(step.args)
                except NotChecked as why:
                    chain.stopped = why.summary.removeprefix("not checked: ")
                    return
                args += ["--thread", chain.thread, "--pause", chain.pause]
                process = self.start(chain, step.label, args)
                running[chain.name] = (step.label, args, process, time.monotonic(), proc.Watchdog(process.pid, idle_limit_s=IDLE_LIMIT_S, cpu_limit_s=CPU_LIMIT_S))
                return

        for chain in chains:
            start_next(chain)
        try:
            while running:
                for name, (label, args, process, started, watchdog) in list(running.items()):
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
                    if snap.exit_code != 0:
                        chain.stopped = f"`{' '.join(args)}` exited with status {snap.exit_code}"
                        continue
                    start_next(chain)
                time.sleep(0.01)
        finally:
            for label, args, process, started, watchdog in running.values():
                process.kill()


def after_search(chain: Chain) -> Checkpoint:
    """The checkpoint saved right after search, in the first run: the one to replay and fork from."""
    run = chain.snap("run")
    found = [c for c in run.library if c.step == 1 and c.source == "loop" and c.next == ("summarize",)]
    if run.exit_code != 0 or len(found) != 1:
        raise NotChecked("not checked: the first run left no checkpoint after search to travel back to "
                         f"(its checkpoints: {run.describe()})")
    return found[0]


@dataclass
class Scenario:
    main: Chain
    edit: Chain
    interrupt: Chain
    seconds: float = 0.0
    services_s: float = 0.0
    failure: CheckFailed | None = None

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the scenario could not run ({self.failure.summary})")
        return self


@pytest.fixture(scope="module")
def course_llm(tmp_path_factory):
    """The course LLM for this module (no Temporal needed): its own ledger, always stopped."""
    llm = CourseLLM(tmp_path_factory.mktemp("lab04-llm"), rules_files=[course.COURSE_TOML])
    try:
        llm.launch()
        yield llm
    finally:
        llm.stop()


@pytest.fixture(scope="module")
def scenario(postgres, course_llm, web_launched, lab_target, tmp_path_factory) -> Scenario:
    course_web = web_launched  # the session's course web, launched; waited for below
    started = time.monotonic()
    key = uuid.uuid4().hex[:8]
    workdir = tmp_path_factory.mktemp("lab04-run")
    run = Step("run", ["run", "--query", QUERY])
    chains = Scenario(
        main=Chain("main", "before", f"research-{key}", f"lab-04main-{key}", [
            run, Step("approve", ["approve"]),
            Step("replay", lambda c: ["replay", "--checkpoint", after_search(c).id]),
            Step("fork", lambda c: ["fork", "--checkpoint", after_search(c).id, "--query", FORK_QUERY])]),
        edit=Chain("edit", "before", f"research-edit-{key}", f"lab-04edit-{key}", [
            run, Step("approve", ["approve", "--summary", EDIT_BEFORE])]),
        interrupt=Chain("interrupt", "interrupt", f"research-int-{key}", f"lab-04int-{key}", [
            run, Step("approve", ["approve", "--summary", EDIT_INTERRUPT])]),
    )
    forks = prefork.ForkServer(workdir, PRELOAD, env=lab_target.python_env()) if prefork.enabled() else None
    try:
        if forks:
            forks.launch()
        # The grader's own evidence readers, imported while the servers start (about 2 s of CPU that
        # would otherwise stall the first observation, and every chain with it).
        import langgraph.checkpoint.postgres  # noqa: F401
        for chain in (chains.main, chains.edit, chains.interrupt):
            chain.location = postgres.create_database(f"lab04_{key}_{chain.name}")
        course_llm.wait_ready()
        course_web.wait_ready()
        if forks:
            try:
                forks.wait_ready()
            except RuntimeError:  # only speed is lost: start each process with a plain exec
                forks.stop()
                forks = None
        chains.services_s = time.monotonic() - started
        Harness(lab_target, course_llm, course_web, workdir, forks).run([chains.main, chains.edit, chains.interrupt])
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
    """The last exception line of a traceback, whatever the exception is called."""
    return student_error(log)


KNOWN_ERRORS = [
    ("EOFError",
     "The process read from its terminal (input()), and a process the grader starts has none. A durable agent "
     "never waits for a human inside the process that runs the graph: it pauses (interrupt_before=[\"review\"], "
     "or interrupt() in the node), saves the pause in the checkpointer and exits. The decision arrives later, "
     "from another process (cli approve), through the same thread_id."),
    ('relation "checkpoints" does not exist',
     "PostgresSaver.setup() was never called: a fresh database has no checkpoint tables."),
    ("is not waiting for review",
     "When the decision arrived, the thread was not paused before review: no checkpoint of this thread in "
     "PostgreSQL says review runs next. Compile the graph with the saver you opened (compile(checkpointer=saver, "
     "...)) so that the pause outlives the process. " + REVISIT_PAUSE),
    ("No checkpointer set",
     "The graph was compiled without a checkpointer, so nothing of the run is saved and no other process can "
     "continue it (get_state has nothing to read). Compile with the saver you were given: "
     "compile(checkpointer=checkpointer, ...). " + REVISIT_PAUSE),
    ("Received no input for __start__",
     "LangGraph found no checkpoint to continue from: was the graph compiled with the saver, and the same "
     "thread_id used?"),
    ("'_put_checkpoint_fut'",
     "The graph has no checkpointer: compile(checkpointer=saver, ...)."),
]
REVISIT_UNREACHABLE = ("The process could not reach a server. The course's cli.py, savers.py, llm.py and websearch.py "
                       "read DATABASE_URL, OPENAI_BASE_URL and COURSE_WEB_URL from the environment (the grader sets "
                       "them): reach the database, the LLM and the web only through them.")


def process_failed(snap: Snapshot, what: str, expected: str) -> CheckFailed:
    if snap.stuck or snap.exit_code is None:
        return CheckFailed(f"`{' '.join(snap.argv)}` never finished: it {snap.stuck or 'was killed'}",
                           observed=f"the process ran {snap.seconds:.0f} s and was killed", expected=expected,
                           revisit="Something blocks: an input() waiting for a human, a lock, a loop that "
                                   "waits in the process. " + REVISIT_PAUSE, details=tail(snap.log))
    error = last_exception(snap.log) or f"exit status {snap.exit_code}"
    todo = unfinished(error, LAB)
    if todo:
        return todo
    revisit = next((advice for needle, advice in KNOWN_ERRORS if needle in snap.log),
                   REVISIT_UNREACHABLE if unreachable(snap.log) else
                   "Read the error above; run the same command yourself (see the README) to see it whole.")
    return CheckFailed(f"{what}: {error}", observed=f"exit status {snap.exit_code}", expected=expected,
                       revisit=revisit, details=tail(snap.log))


def require_ok(chain: Chain, label: str, what: str, expected: str, owner: bool = False) -> Snapshot:
    """A step that must have exited 0; the check that owns it says why not, the others are blocked."""
    snap = chain.snap(label)
    if snap.exit_code == 0 and not snap.stuck:
        if snap.error:
            raise CheckFailed(f"The grader could not read the checkpoints after `{label}`: {snap.error}",
                              revisit="Were the checkpoint tables created by the saver (setup())?")
        return snap
    failure = process_failed(snap, what, expected)
    if owner:
        raise failure
    raise NotChecked(f"not checked: `{label}` of the {chain.name} thread failed ({failure.summary})")


def llm_calls_failure(snap: Snapshot, expected: list[str], moment: str) -> CheckFailed | None:
    strays = [(tag, node) for (tag, _), node in zip(snap.calls, snap.made_in) if node is not None and node != tag]
    if strays and "?" not in snap.nodes:
        tag, node = strays[0]
        return CheckFailed(
            f"The LLM call tagged {tag!r} {moment} was made " + (f"while the node {node!r} ran" if node else
                                                                 "outside any graph node"),
            observed="LLM calls: " + ", ".join(f"{t} (sent by {n or 'no node'})" if n is not None else t
                                               for (t, _), n in zip(snap.calls, snap.made_in)),
            expected="summarize's call sent by summarize, while it runs",
            revisit="The LLM call is summarize's work, and LangGraph saves it as summarize's step: made in "
                    "another node (its reply kept for later) or outside the graph, a replay or a fork no longer "
                    "re-runs it. summarize calls ask(\"summarize\", ...) itself, once.")
    if snap.nodes == expected:
        return None
    observed = f"LLM calls {moment}: {', '.join(snap.nodes) or 'none'}"
    if "?" in snap.nodes:
        return CheckFailed(f"An LLM call {moment} does not say which node made it", observed=observed,
                           expected=", ".join(expected) or "no call",
                           revisit="Call the LLM only through llm.ask(\"summarize\", ...): the tag in the prompt "
                                   "is how the grader counts node executions.")
    return CheckFailed(f"{len(snap.nodes)} LLM call(s) {moment}, expected {len(expected)}", observed=observed,
                       expected=", ".join(expected) or "no call",
                       revisit="summarize makes exactly one call, through llm.ask(\"summarize\", ...).")


def count_failure(snap: Snapshot, expected: list[tuple], moment: str, chain: Chain) -> CheckFailed | None:
    got = snap.shapes()
    if got == expected:
        return None
    observed = f"{len(got)} checkpoint(s) for thread {chain.thread!r}: {snap.describe()}"
    want = f"exactly {len(expected)}: " + ", ".join(f"step {s} ({src})" for s, src in expected)
    if not got:
        return CheckFailed(
            f"No checkpoint of the thread reached PostgreSQL {moment}", observed=observed, expected=want,
            revisit="Compile the graph with the saver you opened: compile(checkpointer=saver, ...). With no "
                    "checkpointer (or an InMemorySaver) the pause lives in the process and dies with it, and "
                    "no other process can continue the thread. " + REVISIT_PAUSE)
    return CheckFailed(f"The thread has {len(got)} checkpoint(s) {moment}, not {len(expected)}",
                       observed=observed, expected=want, revisit=REVISIT_COUNTS)


def unchanged_failure(before: list[Checkpoint], after: Snapshot, what: str) -> CheckFailed | None:
    """Every checkpoint in `before` is still there, identical (id, parent, step, source, next, values)."""
    now = after.by_id()
    for old in before:
        new = now.get(old.id)
        if new is None or not new.same_as(old):
            return CheckFailed(
                f"{what} changed a checkpoint that was already saved",
                observed=f"before: {old.describe()}, summary {str(old.summary)[:60]!r}; after: "
                         + (f"{new.describe()}, summary {str(new.summary)[:60]!r}" if new else "it is gone"),
                expected="saved checkpoints never change: new work is saved as new checkpoints",
                revisit=REVISIT_FORK)
    return None


def parent_name(checkpoint: Checkpoint, snap: Snapshot) -> str:
    """A checkpoint's parent, by step and source when the grader knows it."""
    parent = snap.by_id().get(checkpoint.parent) if checkpoint.parent else None
    return f"step {parent.step} ({parent.source})" if parent else str(checkpoint.parent)


def new_checkpoints(before: Snapshot, after: Snapshot) -> list[Checkpoint]:
    known = {c.id for c in before.library}
    return [c for c in after.library if c.id not in known]


def chain_failure(new: list[Checkpoint], root: Checkpoint, what: str, revisit: str) -> CheckFailed | None:
    """`new` is one line of checkpoints hanging from `root`: the first's parent is root, then each its predecessor."""
    parents = [c.parent for c in new]
    if parents == [root.id] + [c.id for c in new[:-1]]:
        return None
    return CheckFailed(
        f"{what} is not a branch from the checkpoint after search",
        observed="new checkpoints: " + "; ".join(f"{c.describe()} <- parent {c.parent}" for c in new),
        expected=f"the first new checkpoint's parent is {root.id} (step 1, after search), each next one's parent "
                 "the one before it",
        revisit=revisit)


def approved_failure(head: Checkpoint | None, summary: str, moment: str,
                     question: str = QUERY) -> CheckFailed | None:
    """The finished thread: approved, nothing next, and its messages are the conversation: the human's
    question, untouched, then the answer (review's one AI message), the approved summary."""
    if head is None:
        return CheckFailed(f"No checkpoint {moment}")
    if head.next:
        return CheckFailed(
            f"After the decision the thread is still paused before {', '.join(head.next)}",
            observed=f"the thread's latest checkpoint: {head.describe()}",
            expected="the thread finished: review ran, nothing left to run, status \"approved\"",
            revisit=REVISIT_RESUME)
    human = [content for kind, content in head.messages if kind == "human"]
    if human != [question]:
        return CheckFailed(
            f"The finished thread lost the human's question {moment}" if not human else
            f"The finished thread's messages do not hold the human's question as it was asked {moment}",
            observed="messages: " + (", ".join(f"{kind}: {content[:60]!r}" for kind, content in head.messages)
                                     or "none"),
            expected=f"the question {question!r} (a human message) and, after it, review's answer: a conversation "
                     "keeps what was asked",
            revisit="messages has the add_messages reducer (messages: Annotated[list[AnyMessage], add_messages]): "
                    "a node's returned messages are appended to the ones already there. Without the reducer a "
                    "node's return value replaces the whole list, and review's answer wipes out the question.")
    ai = [content for kind, content in head.messages if kind == "ai"]
    problems = []
    if head.status != "approved":
        problems.append(f"status {head.status!r}")
    if head.summary != summary:
        problems.append(f"summary {str(head.summary)[:80]!r}")
    if len(ai) != 1 or ai[-1] != summary:
        problems.append(f"{len(ai)} AI message(s)" + (f", the last {ai[-1][:80]!r}" if ai else ""))
    if not problems:
        return None
    return CheckFailed(
        f"The finished thread does not hold the approved answer {moment}",
        observed="; ".join(problems),
        expected=f"status \"approved\", summary {summary[:80]!r}, and review's one AI message (the answer) with "
                 "that same text, appended to messages",
        revisit="review runs once, after the human: it returns {\"status\": \"approved\", \"messages\": "
                "[AIMessage(content=<the approved summary>)]} (messages has the add_messages reducer, so it "
                "appends). An edited summary must be in the state before review reads it.")


# --- the checks ----------------------------------------------------------------------------------

@pytest.mark.check("pauses-before-review")
def test_first_run_pauses_before_review_and_exits(scenario, evidence):
    """Given a fresh database,
    When `cli run --pause before` runs as its own process,
    Then it exits 0 with the thread paused before review: status "summarized", next == review,
    exactly 4 checkpoints (steps -1..2), one search, one LLM call (summarize), and no interrupt()."""
    chain = scenario.require().main
    run = require_ok(chain, "run", "The first run failed", "exit status 0, paused before review", owner=True)
    evidence.update(llm_calls=len(run.calls), searches=len(run.searches), checkpoints=len(run.library),
                    services=f"{scenario.services_s:.1f}s", scenario=f"{scenario.seconds:.1f}s")
    head = run.head
    if head is not None and not head.next and run.shapes() != PAUSED:
        raise CheckFailed("The first run did not pause: review ran in the same process",
                          observed=f"{run.describe()}; latest: {head.describe()}",
                          expected="the run stops before review (next == review) and the process exits",
                          revisit=REVISIT_PAUSE)
    failure = count_failure(run, PAUSED, "after the first run", chain)
    if failure:
        raise failure
    if head.next != ("review",) or head.status != "summarized" or not head.summary:
        raise CheckFailed("The first run did not stop right before review with a summary",
                          observed=f"latest checkpoint: {head.describe()}, summary {str(head.summary)[:60]!r}",
                          expected="next == review, status \"summarized\", a non-empty summary",
                          revisit="search returns {\"sources\": [...], \"status\": \"searched\"}; summarize returns "
                                  "{\"summary\": <the LLM's reply>, \"status\": \"summarized\"}. " + REVISIT_PAUSE)
    if run.interrupts:
        raise CheckFailed("With --pause before, the run stopped inside review with interrupt()",
                          observed=f"an Interrupt saved in checkpoint_writes: {str(run.interrupts[0][1])[:120]}",
                          expected="a static breakpoint: compile(..., interrupt_before=[\"review\"]) stops before "
                                   "the node runs, and saves no Interrupt",
                          revisit="compile_app(saver, pause=\"before\") compiles with interrupt_before=[\"review\"] "
                                  "and the review node that does not call interrupt().")
    failure = llm_calls_failure(run, ["summarize"], "during the first run")
    if failure:
        raise failure
    if len(run.searches) != 1:
        raise CheckFailed(f"The first run searched the web {len(run.searches)} time(s)",
                          observed=f"searches: {run.searches}", expected=f"one search for {QUERY!r}",
                          revisit="search calls web_search(<the question>) once.")


@pytest.mark.check("decision-in-new-process")
def test_decision_from_a_new_process_finishes_the_thread(scenario, evidence):
    """Given the paused thread (the first process has exited),
    When `cli approve` runs in a new process,
    Then review runs once and the thread finishes: no LLM call, no search, 5 checkpoints (the
    first 4 unchanged), status "approved", and the summary is the answer."""
    chain = scenario.require().main
    run = require_ok(chain, "run", "", "")
    if run.shapes() != PAUSED:
        raise NotChecked(f"not checked: the first run did not leave a thread paused before review ({run.describe()})")
    approve = require_ok(chain, "approve", "The decision failed", "exit status 0, the thread finished", owner=True)
    evidence.update(llm_calls=len(approve.calls), checkpoints=len(approve.library), approve_s=f"{approve.seconds:.1f}")
    if approve.calls or approve.searches:
        again = approve.head is not None and approve.head.next == ("review",)
        raise CheckFailed(
            "The decision started the thread over" if again else "The decision re-ran work that was already done",
            observed=f"during `approve`: LLM calls {approve.nodes or 'none'}, searches {approve.searches or 'none'}; "
                     f"checkpoints: {approve.describe()}",
            expected="no LLM call and no search: search and summarize are done and saved",
            revisit=REVISIT_RESUME)
    failure = (approved_failure(approve.head, run.head.summary, "after `approve`")
               or count_failure(approve, FINISHED, "after `approve`", chain)
               or unchanged_failure(run.library, approve, "The decision"))
    if failure:
        raise failure


@pytest.mark.check("edited-summary-wins")
def test_an_edited_summary_is_the_one_approved(scenario, evidence):
    """Given a paused thread,
    When `cli approve --summary EDIT` runs in a new process,
    Then the thread finishes with EDIT as its summary and its answer, no LLM call, the 4 saved
    checkpoints unchanged (summarize's still holds the LLM's text), plus review's (and, if the edit
    went in with update_state, that update's)."""
    chain = scenario.require().edit
    run = require_ok(chain, "run", "The first run of the edit thread failed", "exit status 0, paused before review",
                     owner=True)
    if run.shapes() != PAUSED:
        raise NotChecked(f"not checked: the edit thread's first run left {run.describe()}")
    approve = require_ok(chain, "approve", "The edited decision failed", "exit status 0, the thread finished",
                         owner=True)
    evidence.update(llm_calls=len(approve.calls), checkpoints=len(approve.library))
    if approve.calls or approve.searches:
        raise CheckFailed("The edited decision re-ran work that was already done",
                          observed=f"LLM calls {approve.nodes or 'none'}, searches {approve.searches or 'none'}",
                          expected="no LLM call and no search", revisit=REVISIT_RESUME)
    failure = approved_failure(approve.head, EDIT_BEFORE, "after `approve --summary`")
    if failure:
        if approve.head is not None and approve.head.summary != EDIT_BEFORE and not approve.head.next:
            failure.summary = "The human's edit is not the summary that ended in the state"
            failure.revisit = ("With interrupt_before the edit goes into the state before the thread continues: "
                               "app.update_state(config, {\"summary\": edited}) (a checkpoint of its own), then "
                               "invoke(None, config). " + failure.revisit)
        raise failure
    if approve.shapes() not in (FINISHED, FINISHED_WITH_UPDATE):
        raise count_failure(approve, FINISHED_WITH_UPDATE, "after `approve --summary`", chain)
    failure = unchanged_failure(run.library, approve, "The edit")
    if failure:
        raise failure


@pytest.mark.check("replay-reruns-summarize")
def test_replay_from_after_search_reruns_summarize(scenario, evidence):
    """Given the finished main thread,
    When `cli replay --checkpoint <after search>` runs in a new process,
    Then exactly the README's two checkpoints are added: LangGraph's copy of the after-search
    checkpoint (step 2, source "fork", its parent the after-search checkpoint, the same values),
    then summarize's (step 3), paused before review again; summarize runs again (exactly one more
    LLM call, no search), and the original branch's 5 checkpoints are untouched."""
    chain = scenario.require().main
    root = after_search(chain)
    approve = require_ok(chain, "approve", "", "")
    replay = require_ok(chain, "replay", "The replay failed", "exit status 0, paused before review again", owner=True)
    new = new_checkpoints(approve, replay)
    evidence.update(llm_calls=len(replay.calls), new_checkpoints=len(new))
    observed_new = "new checkpoints: " + ("; ".join(f"{c.describe()} <- parent {parent_name(c, replay)}" for c in new)
                                          or "none")
    if any(c.source == "input" for c in new):
        raise CheckFailed("The replay started over from a new input instead of re-running from the checkpoint",
                          observed=f"searches during the replay: {replay.searches or 'none'}; {observed_new}",
                          expected="no search, no input checkpoint: only what comes after search runs again",
                          revisit=REVISIT_REPLAY)
    if not new:
        raise CheckFailed("The replay ran nothing: no new checkpoint, no LLM call",
                          observed=f"LLM calls: {replay.nodes or 'none'}; still {len(replay.library)} checkpoints",
                          expected="summarize runs again from the checkpoint after search",
                          revisit="Did the replay pass the checkpoint_id? invoke(None, thread config) continues the "
                                  "thread's latest checkpoint, and a finished thread has nothing left to run. "
                                  + REVISIT_REPLAY)
    first = new[0]
    if first.parent != root.id:
        parent = replay.by_id().get(first.parent)
        raise CheckFailed(
            "The replay did not start from the checkpoint after search",
            observed=f"{observed_new}; searches during the replay: {replay.searches or 'none'}",
            expected=f"the first new checkpoint hangs from {root.id} (step 1, after search), the checkpoint the "
                     "replay was given" + (f", not from step {parent.step} ({parent.source})" if parent else ""),
            revisit="Replay from exactly the checkpoint you are given: {\"configurable\": {\"thread_id\": T, "
                    "\"checkpoint_id\": ID}}. " + REVISIT_REPLAY)
    if [c.shape() for c in new] != REPLAYED:
        update = first.source == "update"
        raise CheckFailed(
            "The replay wrote a state update: that is how a fork starts, not a replay" if update else
            "The replay's new checkpoints are not the two a replay adds",
            observed=observed_new,
            expected="exactly 2 new checkpoints: " + ", ".join(f"step {st} ({src})" for st, src in REPLAYED)
                     + ": LangGraph's copy of the past checkpoint (source \"fork\"), then summarize's",
            revisit=("update_state writes a checkpoint of its own (source \"update\"): it changes history, which "
                     "is what a fork does. A replay changes nothing: invoke(None, past_config), and LangGraph "
                     "itself copies the past checkpoint (source \"fork\") and runs from the copy. "
                     if update else "") + REVISIT_REPLAY)
    if first.next != root.next or first.values != root.values:
        raise CheckFailed("The replay's first checkpoint is not a copy of the checkpoint after search",
                          observed=f"after search: {root.describe()}; the copy: {first.describe()}",
                          expected="the same state and the same next node (summarize): a replay changes nothing",
                          revisit=REVISIT_REPLAY)
    failure = (llm_calls_failure(replay, ["summarize"], "during the replay")
               or chain_failure(new, root, "The replay", REVISIT_REPLAY)
               or unchanged_failure(approve.library, replay, "The replay"))
    if failure:
        if failure.summary.startswith("0 LLM call"):
            failure.summary = "The replay did not run summarize again"
            failure.revisit = REVISIT_REPLAY
        raise failure
    if replay.searches:
        raise CheckFailed("The replay searched the web again", observed=f"searches: {replay.searches}",
                          expected="no search: search ran before the checkpoint the replay starts from",
                          revisit=REVISIT_REPLAY)
    head = new[-1]
    if head.next != ("review",) or head.status != "summarized":
        raise CheckFailed("The replayed branch did not stop before review again",
                          observed=f"its last checkpoint: {head.describe()}",
                          expected="next == review, status \"summarized\": the breakpoint holds on every branch",
                          revisit=REVISIT_REPLAY)


@pytest.mark.check("fork-makes-a-branch")
def test_fork_with_a_new_question_makes_a_new_branch(scenario, evidence):
    """Given the main thread (finished branch + replayed branch),
    When `cli fork --checkpoint <after search> --query Q2` runs in a new process,
    Then update_state makes a new checkpoint whose parent is the after-search checkpoint, the fork
    makes its own LLM call (with Q2 in the prompt), its branch pauses before review with Q2 as the
    question, and no earlier checkpoint changes."""
    chain = scenario.require().main
    root = after_search(chain)
    replay = require_ok(chain, "replay", "", "")
    fork = require_ok(chain, "fork", "The fork failed", "exit status 0, the new branch paused before review",
                      owner=True)
    new = new_checkpoints(replay, fork)
    evidence.update(llm_calls=len(fork.calls), new_checkpoints=len(new))
    if not new:
        raise CheckFailed("The fork saved nothing", observed=f"still {len(fork.library)} checkpoints",
                          expected="an update checkpoint whose parent is the after-search checkpoint, then "
                                   "summarize's", revisit=REVISIT_FORK)
    first = new[0]
    if first.parent != root.id:
        parent = fork.by_id().get(first.parent)
        raise CheckFailed(
            "The fork did not branch from the checkpoint after search",
            observed=f"its first new checkpoint: {first.describe()}, parent "
                     + (f"{first.parent} ({parent.describe()})" if parent else str(first.parent))
                     + (": the thread's latest checkpoint, so the fork continued the thread instead of branching"
                        if first.parent == replay.head.id else ""),
            expected=f"parent {root.id} (step 1, after search), source \"update\"",
            revisit=REVISIT_FORK)
    failure = (chain_failure(new, root, "The fork", REVISIT_FORK)
               or unchanged_failure(replay.library, fork, "The fork"))
    if failure:
        raise failure
    if first.source != "update" or fork.searches:
        raise CheckFailed("The fork did not start with update_state",
                          observed=f"first new checkpoint: {first.describe()}; searches: {fork.searches or 'none'}",
                          expected="source \"update\" (update_state on the past checkpoint), and no new search",
                          revisit=REVISIT_FORK)
    if [c.shape() for c in new] != FORKED:
        raise CheckFailed("The fork's new checkpoints are not the two a fork adds",
                          observed="new checkpoints: " + "; ".join(c.describe() for c in new),
                          expected="exactly 2: " + ", ".join(f"step {st} ({src})" for st, src in FORKED)
                                   + ": the update, then summarize's",
                          revisit=REVISIT_FORK)
    if fork.nodes != ["summarize"] or FORK_QUERY not in fork.calls[0][1]:
        raise CheckFailed("The fork's branch did not summarize for the new question",
                          observed=f"LLM calls during the fork: {fork.nodes or 'none'}"
                                   + (f"; the prompt: {fork.calls[0][1][:160]!r}" if fork.calls else ""),
                          expected=f"one summarize call whose prompt asks {FORK_QUERY!r}",
                          revisit="The fork puts the new question in the state (a HumanMessage in messages) "
                                  "and then runs the branch: invoke(None, <the config update_state returned>). "
                                  + REVISIT_FORK)
    head = new[-1]
    if head.next != ("review",) or head.question != FORK_QUERY or head.status != "summarized":
        raise CheckFailed("The fork's branch does not hold the new question, paused before review",
                          observed=f"its last checkpoint: {head.describe()}, question {head.question!r}",
                          expected=f"paused before review, status \"summarized\", question {FORK_QUERY!r} (the "
                                   "last human message)",
                          revisit=REVISIT_FORK)


@pytest.mark.check("interrupt-pauses")
def test_interrupt_in_the_node_pauses_the_run(scenario, evidence):
    """Given a fresh database,
    When `cli run --pause interrupt` runs as its own process,
    Then it exits 0 with 4 checkpoints, one LLM call, next == review, and an Interrupt saved in
    checkpoint_writes (the payload review passed to interrupt(), with the summary)."""
    chain = scenario.require().interrupt
    run = require_ok(chain, "run", "The first run (interrupt form) failed", "exit status 0, paused inside review",
                     owner=True)
    evidence.update(llm_calls=len(run.calls), checkpoints=len(run.library), interrupts=len(run.interrupts))
    head = run.head
    if head is not None and not head.next and run.library:
        raise CheckFailed("The first run (interrupt form) did not pause: review ran to the end",
                          observed=f"{run.describe()}; latest: {head.describe()}",
                          expected="review calls interrupt(...) and the run stops there", revisit=REVISIT_INTERRUPT)
    failure = (count_failure(run, PAUSED, "after the first run (interrupt form)", chain)
               or llm_calls_failure(run, ["summarize"], "during the first run (interrupt form)"))
    if failure:
        raise failure
    if not run.interrupts:
        raise CheckFailed("With --pause interrupt, no Interrupt was saved",
                          observed=f"checkpoints {run.describe()}; checkpoint_writes holds no __interrupt__ row",
                          expected="review calls interrupt(payload): LangGraph saves the payload with the checkpoint",
                          revisit="compile_app(saver, pause=\"interrupt\") compiles without interrupt_before and uses "
                                  "the review node that calls interrupt(). " + REVISIT_INTERRUPT)
    if head.summary and head.summary not in str(run.interrupts[-1][1]):
        raise CheckFailed("The interrupt does not show the human what to review",
                          observed=f"the Interrupt's value: {str(run.interrupts[-1][1])[:160]}",
                          expected="the payload passed to interrupt() includes the summary",
                          revisit="interrupt({\"question\": ..., \"summary\": state[\"summary\"], \"sources\": ...})")


@pytest.mark.check("command-resume-edits")
def test_command_resume_carries_the_edit(scenario, evidence):
    """Given the thread paused at interrupt() (the first process has exited),
    When `cli approve --summary EDIT --pause interrupt` runs in a new process,
    Then the resume value (saved in checkpoint_writes) carries EDIT, review finishes once, no LLM
    call, 5 checkpoints (the first 4 unchanged), and EDIT is the summary and the answer."""
    chain = scenario.require().interrupt
    run = require_ok(chain, "run", "", "")
    if run.shapes() != PAUSED or not run.interrupts:
        raise NotChecked(f"not checked: the interrupt thread's first run did not pause with an Interrupt "
                         f"({run.describe()})")
    approve = require_ok(chain, "approve", "The decision (interrupt form) failed", "exit status 0, the thread finished",
                         owner=True)
    evidence.update(llm_calls=len(approve.calls), checkpoints=len(approve.library), resumes=len(approve.resumes))
    if approve.calls or approve.searches:
        raise CheckFailed("The decision re-ran work that was already done",
                          observed=f"LLM calls {approve.nodes or 'none'}, searches {approve.searches or 'none'}; "
                                   f"checkpoints: {approve.describe()}",
                          expected="no LLM call and no search", revisit=REVISIT_INTERRUPT)
    head = approve.head
    if head is not None and head.next == ("review",):
        raise CheckFailed("After the decision the thread is still paused at interrupt()",
                          observed=f"latest checkpoint: {head.describe()}; resume values saved: "
                                   f"{len(approve.resumes)}",
                          expected="review gets the decision and finishes", revisit=REVISIT_INTERRUPT)
    if not any(EDIT_INTERRUPT in str(value) for _, value in approve.resumes):
        raise CheckFailed("The edit did not travel in the resume value",
                          observed=f"resume values in checkpoint_writes: "
                                   f"{[str(v)[:100] for _, v in approve.resumes] or 'none'}",
                          expected=f"Command(resume={{..., \"summary\": {EDIT_INTERRUPT[:40]!r}...}})",
                          revisit="The decision, edit included, is the resume value: "
                                  "invoke(Command(resume={\"action\": \"approve\", \"summary\": edited}), config); "
                                  "review reads it as interrupt()'s return value. " + REVISIT_INTERRUPT)
    failure = (approved_failure(head, EDIT_INTERRUPT, "after the Command resume")
               or count_failure(approve, FINISHED, "after the Command resume", chain)
               or unchanged_failure(run.library, approve, "The resume"))
    if failure:
        raise failure


@pytest.mark.check("sql-confirms")
def test_sql_on_the_checkpoint_tables_confirms_the_tree(scenario, evidence):
    """Then plain SQL on the checkpoints table (not the library) finds the same rows as list() for
    every thread, and on the main thread the after-search checkpoint has three children: the
    original branch, the replay's and the fork's."""
    scenario.require()
    for chain in (scenario.main, scenario.edit, scenario.interrupt):
        label = next((name for name in reversed([s.label for s in chain.steps]) if name in chain.snaps), None)
        if label is None:
            raise NotChecked(f"not checked: no step of the {chain.name} thread ran ({chain.stopped})")
        snap = chain.snaps[label]
        rows = [c.row() for c in snap.library]
        evidence[f"sql_{chain.name}"] = len(snap.sql)
        if snap.sql != rows:
            raise CheckFailed(f"SQL on the checkpoints table disagrees with checkpointer.list() ({chain.name} thread, "
                              f"after `{label}`)",
                              observed=f"SQL: {len(snap.sql)} row(s); list(): {len(rows)}",
                              expected="the same rows (id, parent, step, source) both ways, in the same order",
                              revisit="Only the default namespace (checkpoint_ns = '') is counted: no subgraphs here.")
    chain = scenario.main
    root = after_search(chain)
    fork = require_ok(chain, "fork", "", "")
    children = [row for row in fork.sql if row[1] == root.id]
    if len(children) != 3:
        raise CheckFailed("The checkpoint after search does not have three children in SQL",
                          observed=f"SELECT ... WHERE parent_checkpoint_id = '{root.id}': "
                                   + ", ".join(f"step {r[2]} ({r[3]})" for r in children),
                          expected="3: the original run's (after summarize), the replay's and the fork's",
                          revisit=REVISIT_FORK)
