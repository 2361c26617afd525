"""Lab 10 autograder (the capstone): one batch of questions, one eviction, the runtimes side by side.

Scenario, run once for the module, for each runtime in turn (the naive baseline, LangGraph on
PostgreSQL, Temporal, Restate), each with its own batch id, question ids, database, LLM key and web
caller, and one kill point for the run:
  1. write the batch: N questions drawn from labkit/corpus/capstone.toml, ids made for this run;
     the course LLM answers each question with a reply made for this run (12 ms, the text's 12 s on
     the time scale), the course web searches in 2 ms (the text's 2 s);
  2. start pod 1 (`python -m <lab>.pod <runtime>`, a real process under labkit.attribution);
  3. the LLM holds its answer to question k+1 (k drawn near 48% of N): once that request is in the
     ledger, questions 1..k are answered and the batch is not finished: SIGKILL pod 1 (the eviction);
  4. release the held answer and start pod 2 as on another host (fresh cwd, TMPDIR and HOME; same
     database, same Temporal server and restate-server), wait until it finishes;
  5. measure from outside: the answers table, the LLM ledger (every call tied to its question by
     the [lab10 q=<id>] tag and to its process by X-Lab-Origin), the web's ledger, the runtime's
     store (checkpoint tables, workflow histories), the lines of the student's module.

LAB10_QUESTIONS_N (default 20) sets N: bench/capstone.py runs the same check with 200. Pods are forked
from a warm interpreter (labkit.prefork; LAB_PREFORK=0 for plain exec), except Restate's, which
inherits its listening socket. Without a restate-server binary, Restate's checks say "not checked".
LAB10_REPORT_DIR: where the side-by-side table (capstone.md) and picture (capstone.svg) go.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import random
import sys
import time
import tokenize
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from labkit import prefork, proc
from labkit.feedback import CheckFailed, NotChecked, student_error, tail, unfinished
# Shared with the crash sweep (`lab sweep 10`): the same batch, pods, tags and readings.
from scenario_lab10_capstone import (PRELOAD, answer_rows, checkpoint_threads, create_answers_table, draw_batch,
                                     llm_calls, pod_env, pod_host, question_rule, release_dead_pod, reply_for,
                                     terminate_open, with_temporal_client)

LAB = "10"
RUNTIMES = ("naive", "langgraph", "temporal", "restate")
STUDENT_FILE = {"naive": "naive.py", "langgraph": "graph_batch.py", "temporal": "workflows.py",
                "restate": "restate_batch.py"}
N = int(os.environ.get("LAB10_QUESTIONS_N", "20"))
TIME_SCALE = float(os.environ.get("LAB10_TIME_SCALE", "0.001"))  # 12 s -> 12 ms
TEXT_LLM_S, TEXT_FETCH_S = 12.0, 2.0  # §64.2.3's latencies
HELD_MS = 900_000  # the held answer: far longer than anything the check waits for
HANG_S = 600.0  # the grader's own hang guard for one pod; verdicts come from states and the Watchdog
# PRELOAD (scenario_lab10_capstone): what the fork server imports once. The Restate pod is started
# with a plain exec: it inherits its listening socket (pass_fds).
REVISIT_RESUME = ("§64.2.3: the new pod must find the batch's progress where the old one left it, in the "
                  "store (PostgreSQL's checkpoints, Temporal's history), under a name both pods compute "
                  "the same way: the batch's id, never the process's.")


# --- one run of one runtime ------------------------------------------------------------------------

@dataclass
class Run:
    runtime: str
    questions: list[dict]
    kill_after: int  # questions answered before the eviction (k); the held one is questions[k]
    batch_id: str
    caller: str
    db_url: str
    task_queue: str
    workdir: Path
    pods: list = field(default_factory=list)
    killed_at: float | None = None
    restarted_at: float | None = None
    answered_at_kill: set = field(default_factory=set)
    asked_before_kill: Counter = field(default_factory=Counter)
    origins_before_kill: set = field(default_factory=set)  # thread ids / workflow ids pod 1 used
    rows: dict = field(default_factory=dict)  # question id -> answer row
    llm: list = field(default_factory=list)  # (question id, entry)
    searches: Counter = field(default_factory=Counter)  # question id -> searches
    search_results: dict = field(default_factory=dict)  # question id -> slugs the web returned first
    replies: dict = field(default_factory=dict)  # question id -> the reply made for this run
    store_bytes: int = 0
    store_what: str = ""
    origins_after: set = field(default_factory=set)
    code_lines: int = 0
    error: CheckFailed | None = None
    unavailable: str | None = None  # a runtime this machine cannot run (no restate-server): not checked

    @property
    def held(self) -> dict:
        return self.questions[self.kill_after]

    @property
    def ids(self) -> list[str]:
        return [q["id"] for q in self.questions]

    def calls(self) -> Counter:
        return Counter(qid for qid, _ in self.llm)

    def window(self) -> set[str]:
        """Questions whose call was in flight at the eviction: asked, not answered (at least once)."""
        return {qid for qid in self.asked_before_kill if qid not in self.answered_at_kill}

    def reissued(self) -> dict[str, int]:
        """Repeated LLM calls outside the at-least-once window: question id -> extra calls."""
        window = self.window()
        return {qid: n - 1 for qid, n in self.calls().items() if n > 1 and qid not in window}

    def window_repeats(self) -> int:
        window = self.window()
        return sum(n - 1 for qid, n in self.calls().items() if n > 1 and qid in window)

    def researched(self) -> int:
        return sum(n - 1 for n in self.searches.values() if n > 1)

    def to_next_answer_s(self) -> float | None:
        later = [row["at"] for qid, row in self.rows.items() if qid not in self.answered_at_kill]
        return min(later) - self.restarted_at if later and self.restarted_at else None


def code_lines(path: Path) -> int:
    """Lines of code: not blank, not only a comment, not a docstring."""
    source = path.read_text()
    doc_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                doc_lines.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - doc_lines)


def checkpoint_store(db_url: str) -> tuple[int, str]:
    with psycopg.connect(db_url, autocommit=True, connect_timeout=10) as conn:
        size = conn.execute("SELECT coalesce(sum(pg_total_relation_size(oid)), 0) FROM pg_class WHERE relname IN "
                            "('checkpoints', 'checkpoint_blobs', 'checkpoint_writes') AND relkind = 'r'").fetchone()[0]
        exists = conn.execute("SELECT to_regclass('public.checkpoints') IS NOT NULL").fetchone()[0]
        rows = conn.execute("SELECT count(*), count(DISTINCT thread_id) FROM checkpoints").fetchone() if exists else (0, 0)
    return int(size), f"{rows[0]} checkpoints in {rows[1]} thread(s)"


def origin_key(entry, runtime: str) -> str | None:
    """Which durable unit made a call: the Temporal workflow id (and run) or the pod's pid."""
    activity = (entry.origin or {}).get("activity") or {}
    if runtime == "temporal":
        return activity.get("workflow_id")
    return None


# --- the runtimes' stores (release_dead_pod, terminate_open: scenario_lab10_capstone) ------------------

def restate_store(server, batch_id: str) -> tuple[int, str]:
    """The batch invocation's journal: what restate-server keeps for it (entries and their bytes)."""
    rows = [row for row in server.invocations("CapstoneBatch/") if row.get("target_service_key") == batch_id]
    entries, size = 0, 0
    for row in rows:
        for entry in server.journal(row["id"]):
            entries += 1
            size += len(json.dumps(entry, default=str))
    return size, f"{entries} journal entries in {len(rows)} invocation(s)"


def temporal_store(address: str, task_queue: str) -> tuple[int, str, int]:
    async def measure(client):
        size, events, runs = 0, 0, 0
        async for execution in client.list_workflows(f'TaskQueue="{task_queue}"'):
            runs += 1
            events += execution.history_length or 0
            size += execution.raw_info.history_size_bytes or 0
        return size, f"{events} history events in {runs} workflow run(s)", runs

    return asyncio.run(with_temporal_client(address, measure))


# --- the scenario ------------------------------------------------------------------------------------

class Scenario:
    def __init__(self, target, services, postgres, web, workdir: Path, seed: int):
        self.target, self.services, self.postgres, self.web = target, services, postgres, web
        self.workdir, self.seed = workdir, seed
        self.rng = random.Random(seed)
        self.runs: dict[str, Run] = {}

    def pod_failed(self, run: Run, pod, doing: str) -> CheckFailed:
        log = pod.output()
        error = student_error(log) or f"exit status {pod.returncode}"
        return unfinished(student_error(log) or log, LAB) or CheckFailed(
            f"The {run.runtime} pod failed while {doing}: {error}",
            observed=f"`python -m {self.target.module('pod')} {run.runtime}` exited with status {pod.returncode}",
            expected="a pod that works through the batch until it is done (exit 0) or evicted",
            revisit=f"Run the pod yourself (README: Run it by hand) and fix {STUDENT_FILE[run.runtime]}.",
            details=tail(log))

    def start_pod(self, run: Run):
        n = len(run.pods) + 1
        host = pod_host(run.workdir, n)  # a host of its own: nothing local survives the eviction
        env = pod_env(self.target, host, db_url=run.db_url, web_url=self.web.url_for(run.caller),
                      llm_url=self.services.llm_base_url, caller=run.caller, questions=run.workdir / "questions.json",
                      batch_id=run.batch_id, questions_per_run=self.questions_per_run,
                      temporal_address=self.services.temporal_address, task_queue=run.task_queue)
        socks = []
        if run.runtime == "restate":
            extra, socks = self.restate_env(run)
            env.update(extra)
        elif self.forks is not None:
            pod = self.forks.start(self.target.module("pod"), [run.runtime], name=f"{run.runtime}-pod{n}",
                                   log_path=run.workdir / f"pod{n}.log", env=env, cwd=host)
            run.pods.append(pod)
            return pod
        try:
            pod = proc.start([sys.executable, "-m", self.target.module("pod"), run.runtime],
                             name=f"{run.runtime}-pod{n}", log_path=run.workdir / f"pod{n}.log", env=env, cwd=host,
                             student=True, pass_fds=[s.fileno() for s in socks])
        finally:
            for sock in socks:
                sock.close()  # the pod holds its own copy: a dead pod's port must refuse, not queue
        run.pods.append(pod)
        return pod

    def restate_env(self, run: Run) -> tuple[dict, list]:
        """The listening socket (the same port for every pod: the server calls that address) and env."""
        from labkit import restate

        sock = restate.listening_socket(self.restate_port)
        return ({"LAB10_RESTATE_BIND": f"fd://{sock.fileno()}", "LAB10_RESTATE_URI": f"http://127.0.0.1:{self.restate_port}",
                 "RESTATE_INGRESS_URL": self.restate.ingress_url, "RESTATE_ADMIN_URL": self.restate.admin_url}, [sock])

    def ledger_calls(self, run: Run) -> list:
        return llm_calls(self.services.llm.ledger(), run.caller)

    def run(self, runtime: str) -> Run:
        tag = f"{runtime[:2]}{uuid.uuid4().hex[:5]}"
        workdir = self.workdir / runtime
        workdir.mkdir(parents=True)
        run = Run(runtime=runtime, questions=draw_batch(self.rng, self.corpus, tag, N), kill_after=self.kill_after,
                  batch_id=f"batch-{tag}", caller=f"lab-lab10-{tag}", db_url=self.postgres.create_database(f"lab10_{tag}"),
                  task_queue=f"lab10-{tag}", workdir=workdir)
        self.runs[runtime] = run
        if runtime == "restate" and self.restate is None:
            run.unavailable = self.restate_missing
            return run
        (workdir / "questions.json").write_text(json.dumps(run.questions))
        create_answers_table(self.target, run.db_url)  # the deploy step: the answers table
        nonce = uuid.uuid4().hex[:8]
        rules = []
        for q in run.questions:
            run.replies[q["id"]] = reply_for(nonce, q)
            rules.append(question_rule(q, run.replies[q["id"]], round(TEXT_LLM_S * 1000 * TIME_SCALE)))
        held = dict(rules[run.kill_after], latency_ms=HELD_MS)
        self.services.llm.push_rules([*rules[:run.kill_after], held, *rules[run.kill_after + 1:]])
        self.web.set_behaviour("_search", caller=run.caller, slow_ms=round(TEXT_FETCH_S * 1000 * TIME_SCALE))
        try:
            self.evict_and_restart(run, rules[run.kill_after])
        except CheckFailed as failure:
            run.error = failure
        finally:
            for pod in run.pods:
                pod.stop()
            if runtime == "temporal":
                terminate_open(self.services.temporal_address, run.task_queue)
        return run

    def wait(self, run: Run, pod, until, doing: str):
        """Poll `until()` (truthy: done) while the pod lives and progresses; a verdict otherwise."""
        watch = proc.Watchdog(pod.pid, cpu_limit_s=120.0)
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            found = until()
            if found:
                return found
            if not pod.alive:
                found = until()
                if found:
                    return found
                raise self.pod_failed(run, pod, doing)
            verdict = watch.stuck()
            if verdict:
                raise CheckFailed(
                    f"The {run.runtime} pod stopped making progress while {doing}",
                    observed=f"the pod {verdict}; answers so far: {len(answer_rows(run.db_url, run.batch_id))} of {N}",
                    expected="a pod that keeps working through the batch (a retry that waits long, tens of "
                             "seconds, looks the same from outside: keep retry intervals short)",
                    revisit=REVISIT_RESUME, details=tail(pod.output()))
            time.sleep(0.05)
        raise CheckFailed(f"The {run.runtime} pod was still {doing} after {HANG_S:.0f} s",
                          observed=tail(pod.output(), 5), expected="the batch finished", revisit=REVISIT_RESUME)

    def evict_and_restart(self, run: Run, release_rule: dict) -> None:
        held = run.held["id"]
        pod1 = self.start_pod(run)

        def held_call_made():
            calls = self.ledger_calls(run)
            if any(qid == held for qid, _ in calls):
                return calls
            if len(calls) > 2 * N:
                return calls  # the batch redoes work instead of advancing: judged below
            return None

        self.wait(run, pod1, held_call_made, f"answering the first {run.kill_after} questions")
        pod1.kill()  # the eviction: SIGKILL, nothing runs after it
        pod1.wait(10)
        run.killed_at = time.time()
        calls = self.ledger_calls(run)
        run.asked_before_kill = Counter(qid for qid, _ in calls)
        run.origins_before_kill = {origin_key(e, run.runtime) for _, e in calls} - {None}
        rows = answer_rows(run.db_url, run.batch_id)
        run.answered_at_kill = set(rows)
        if run.runtime == "langgraph":
            run.origins_before_kill = checkpoint_threads(run.db_url)
        unanswered = [q["id"] for q in run.questions[:run.kill_after] if q["id"] not in rows]
        if held in run.asked_before_kill and unanswered:  # (a batch that never got there is judged by the checks)
            raise CheckFailed(
                f"The eviction did not land after question {run.kill_after} ({run.runtime})",
                observed=f"question {held}'s LLM call was in flight, but {len(unanswered)} earlier question(s) had "
                         f"no published answer ({', '.join(unanswered[:3])})",
                expected=f"questions 1..{run.kill_after} answered, in the queue's order, before question "
                         f"{run.kill_after + 1} is asked",
                revisit="The batch answers its questions one at a time, in order: search, summarize, review and "
                        "publish one question before the next starts.")
        if held in rows or len(rows) >= N:
            raise CheckFailed(
                f"The eviction did not land mid-batch ({run.runtime})",
                observed=f"{len(rows)} of {N} answers published when the pod was killed, question {held} among them",
                expected=f"the kill while question {held} (number {run.kill_after + 1}) waits for its LLM answer",
                revisit="The check holds one answer of the LLM to place the kill: the batch must ask its "
                        "questions in the queue's order, one at a time.")
        self.services.llm.push_rules([release_rule])  # the new pod gets its answer at once
        if run.runtime == "temporal":
            in_flight = [((e.origin or {}).get("activity") or {}) for qid, e in calls if qid in run.window()]
            release_dead_pod(self.services.temporal_address, run.task_queue,
                             [a for a in in_flight if a.get("workflow_id") and a.get("id")])
        pod2 = self.start_pod(run)
        run.restarted_at = time.time()

        def finished():
            if not pod2.alive and pod2.returncode == 0:
                return True
            if len(self.ledger_calls(run)) > 2 * N + 2:
                return True  # redoing work without end: stop here, judged by the checks
            return None

        self.wait(run, pod2, finished, "finishing the batch after the eviction")
        if pod2.alive:
            pod2.kill()

    def measure(self, run: Run, target_root: Path) -> None:
        run.rows = answer_rows(run.db_url, run.batch_id)
        run.llm = self.ledger_calls(run)
        by_text = {q["text"]: q["id"] for q in run.questions}
        for entry in self.web.ledger().entries(caller=run.caller, kind="search"):
            qid = by_text.get(entry.query)
            if qid:
                run.searches[qid] += 1
                run.search_results.setdefault(qid, list(entry.results or []))
        if run.runtime == "langgraph":
            run.store_bytes, run.store_what = checkpoint_store(run.db_url)
            run.origins_after = checkpoint_threads(run.db_url)
        elif run.runtime == "temporal":
            run.store_bytes, run.store_what, _ = temporal_store(self.services.temporal_address, run.task_queue)
            run.origins_after = {origin_key(e, run.runtime) for _, e in run.llm} - {None}
        elif run.runtime == "restate":
            run.store_bytes, run.store_what = restate_store(self.restate, run.batch_id)
        else:
            run.store_bytes, run.store_what = 0, "nothing: the pod's memory"
        run.code_lines = code_lines(target_root / STUDENT_FILE[run.runtime])


@pytest.fixture(scope="module")
def restate_server(tmp_path_factory):
    """restate-server for the module, or None (with the reason) on a machine without it."""
    from labkit import restate

    reason = restate.unavailable()
    if reason:
        yield None, reason
        return
    server = restate.RestateServer(tmp_path_factory.mktemp("restate") / "server").launch()
    try:
        yield server, None
    finally:
        server.stop()


@pytest.fixture(scope="module")
def forks(lab_target, tmp_path_factory):
    """The fork server for the pods (LAB_PREFORK=0: plain exec), launched before the services."""
    server = None
    if prefork.enabled():
        server = prefork.ForkServer(tmp_path_factory.mktemp("lab10-forks"), PRELOAD, env=lab_target.python_env())
        server.launch()
    try:
        yield server
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def scenario(lab_target, forks, services, postgres, web_launched, restate_server, tmp_path_factory):
    import labkit
    from labkit import restate

    web = web_launched.wait_ready()
    seed = int(os.environ.get("LAB10_SEED", str(random.randrange(1 << 30))))
    found = Scenario(lab_target, services, postgres, web, tmp_path_factory.mktemp("lab10"), seed)
    found.corpus = Path(labkit.__file__).parent / "corpus" / "capstone.toml"
    found.questions_per_run = found.rng.randint(3, 7) if N <= 40 else found.rng.randint(20, 40)
    # One kill point per run, the same for every runtime (so the table compares like with like),
    # drawn near 48% of the batch: the eviction lands after question k, with k+1's LLM call in flight.
    found.kill_after = max(1, min(N - 2, round(N * 0.48) + found.rng.randint(-max(1, N // 20), max(1, N // 20))))
    found.restate, found.restate_missing = restate_server
    found.forks = forks.wait_ready() if forks is not None else None
    if found.restate is not None:
        found.restate.wait_ready()
        found.restate_port = restate.free_port()
    for runtime in RUNTIMES:
        run = found.run(runtime)
        if run.unavailable:
            continue
        try:
            found.measure(run, lab_target.root / lab_target.name)
        except Exception as err:  # a store the runtime never created: measured as empty
            run.error = run.error or CheckFailed(f"Measuring the {runtime} run failed: {err}")
    report = os.environ.get("LAB10_REPORT_DIR")
    if report and all(r.error is None for r in found.runs.values()):
        write_report(found, Path(report))
    yield found


def run_of(scenario: Scenario, runtime: str) -> Run:
    run = scenario.runs[runtime]
    if run.unavailable:
        raise NotChecked(f"not checked: {runtime} cannot run on this machine: {run.unavailable}")
    if run.error is not None:
        raise run.error
    return run


# --- what the batch must show -------------------------------------------------------------------------

def present(scenario: Scenario) -> list[str]:
    """The runtimes this machine runs (restate-server may be missing: its checks say "not checked")."""
    return [r for r in RUNTIMES if not scenario.runs[r].unavailable]


def check_answers(run: Run) -> None:
    missing = [qid for qid in run.ids if qid not in run.rows]
    if missing and run.reissued():
        check_no_reissue(run)  # the batch went round in circles: say why, not only what is missing
    if missing:
        raise CheckFailed(
            f"{len(missing)} of {N} questions have no answer after the restart ({run.runtime})",
            observed=f"no answer for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
            expected=f"all {N} answers published once the new pod finished",
            revisit=REVISIT_RESUME)
    for qid in run.ids:
        row = run.rows[qid]
        if row["summary"] != run.replies[qid]:
            raise CheckFailed(
                f"The answer published for {qid} is not the LLM's answer to {qid} ({run.runtime})",
                observed=f"{row['summary'][:120]!r}", expected=f"{run.replies[qid][:120]!r}",
                revisit="Each question's summary goes with that question: keep the cursor and the question it "
                        "points at together in the durable state.")
        slugs = [url.rsplit("/", 1)[-1] for url in row["sources"]]
        if slugs != run.search_results.get(qid):
            raise CheckFailed(
                f"The sources published for {qid} are not what its search found ({run.runtime})",
                observed=f"{slugs}", expected=f"{run.search_results.get(qid)}",
                revisit="summarize and the published answer use the sources of the same question's search.")
        if row["status"] != "approved":
            raise CheckFailed(f"The answer for {qid} was published with status {row['status']!r}",
                              observed=row["status"], expected="'approved' (the review's verdict)",
                              revisit="review's verdict is the answer's status.")


def check_no_reissue(run: Run) -> None:
    again = run.reissued()
    if not again:
        return
    before = {qid for qid in again if qid in run.answered_at_kill}
    examples = ", ".join(f"{qid} x{n + 1}" for qid, n in list(again.items())[:5])
    pod1_repeats = {qid for qid, n in run.asked_before_kill.items() if n > 1}
    observed = (f"{sum(again.values())} repeated LLM call(s) for {len(again)} question(s) ({examples}); "
                f"{len(before)} of them were answered before the eviction")
    if pod1_repeats:
        if run.runtime == "temporal":
            raise CheckFailed(
                "The batch asked questions again without any crash: a continue-as-new that drops the cursor",
                observed=observed + f"; {len(pod1_repeats)} question(s) were asked twice by the first pod already, "
                         "each time in a new run of the same workflow",
                expected="each run of the batch workflow starting where the previous one stopped",
                revisit="continue-as-new starts a new run whose only memory is its input: pass the cursor "
                        "(the index of the next question) in it, e.g. continue_as_new(replace(batch, cursor=end)).")
        raise CheckFailed("The batch asked questions again without any crash", observed=observed,
                          expected="each question asked once", revisit=REVISIT_RESUME)
    fresh = run.origins_after - run.origins_before_kill
    if run.runtime == "langgraph" and fresh:
        raise CheckFailed(
            "The new pod started a new thread instead of resuming the batch's: a per-process thread id",
            observed=observed + f"; the new pod wrote checkpoints under thread id(s) the first pod never used "
                     f"({', '.join(sorted(fresh)[:3])})",
            expected="the new pod resuming the old pod's thread: the first question it asks is the one the eviction cut off",
            revisit="The thread id is the durable key of the batch: derive it from the batch's id (thread_id = "
                    "f\"capstone-{batch.batch_id}\"), never from the process (pid, uuid, time, host).")
    if run.runtime == "temporal" and fresh:
        raise CheckFailed(
            "The new pod started new workflows instead of finding the batch's: a per-process workflow id",
            observed=observed + f"; the repeated calls came from workflow id(s) the first pod never used "
                     f"({', '.join(sorted(fresh)[:3])})",
            expected="the new pod finding the running workflow by its id",
            revisit="The workflow id is the durable key: derive it from the batch (and the question), never "
                    "from the process.")
    if run.runtime == "restate":
        raise CheckFailed(
            "The new pod asked finished questions again: a step outside ctx.run is not journaled",
            observed=observed + " (the same invocation, replayed on the new pod)",
            expected="the replay handing back every finished step's recorded result",
            revisit="Restate journals ctx.* calls (ctx.run, calls, state), not every await (§64.2.4's \"at every "
                    "await point\" is wrong): a retried invocation runs the handler from the top, and each call "
                    "made outside ctx.run is made again. Put every step in `await ctx.run_typed(name, fn, ...)`.")
    raise CheckFailed(
        "The new pod asked finished questions again: the batch loop runs outside the durable boundary",
        observed=observed + " (under the same thread or workflow ids as before)",
        expected="the new pod skipping every question the store says is done",
        revisit="A loop in the pod that starts each question again (invoke with the input, a new workflow "
                "run for a finished id) redoes what the store recorded. Put the loop inside the durable unit "
                "(the graph's cursor, the workflow's cursor), or ask the store first: get_state(config).next / "
                "invoke(None, config) for a thread, REJECT_DUPLICATE + the existing result for a workflow.")


def evidence_of(run: Run, evidence: dict) -> None:
    evidence.update(answered=f"{len(run.rows)}/{N}", killed_after=run.kill_after,
                    reissued=sum(run.reissued().values()), in_flight_repeats=run.window_repeats())


# --- the checks ---------------------------------------------------------------------------------------------

@pytest.mark.check("eviction-mid-batch")
def test_each_runtime_evicted_mid_batch_and_restarted_on_a_new_host(scenario, evidence):
    """Given each runtime's batch of N questions, the LLM holding its answer to question k+1 (k near 48% of N),
    When the pod is SIGKILLed with that call in flight and a new pod starts on a fresh host,
    Then the kill landed after question k's answer and before the batch finished, for every runtime."""
    for runtime in present(scenario):
        run = run_of(scenario, runtime)
        if run.killed_at is None or len(run.pods) < 2 or run.pods[0].killed_with is None:
            raise CheckFailed(f"The {runtime} pod was never evicted", observed=str(run.pods),
                              expected="pod 1 SIGKILLed, pod 2 started", revisit=REVISIT_RESUME)
        evidence[runtime] = f"killed after {len(run.answered_at_kill)}/{N}"


@pytest.mark.check("langgraph-all-answered")
def test_langgraph_batch_answers_every_question(scenario, evidence):
    """Given the LangGraph batch evicted mid-way,
    When the new pod has finished,
    Then every question has exactly the LLM's answer to it, with its own search's sources, approved."""
    run = run_of(scenario, "langgraph")
    check_answers(run)
    evidence_of(run, evidence)


@pytest.mark.check("langgraph-resumes")
def test_langgraph_new_pod_resumes_at_the_cut_off_question(scenario, evidence):
    """Given the LangGraph batch evicted while question k+1's LLM call was in flight,
    When the new pod resumes the thread,
    Then no question answered before the eviction is asked again (the cut-off call may be, once)."""
    run = run_of(scenario, "langgraph")
    check_no_reissue(run)
    evidence_of(run, evidence)


@pytest.mark.check("temporal-all-answered")
def test_temporal_batch_answers_every_question(scenario, evidence):
    """Given the Temporal batch evicted mid-way,
    When the new pod's worker has finished the workflow,
    Then every question has exactly the LLM's answer to it, with its own search's sources, approved."""
    run = run_of(scenario, "temporal")
    check_answers(run)
    evidence_of(run, evidence)


@pytest.mark.check("temporal-resumes")
def test_temporal_new_pod_resumes_at_the_cut_off_question(scenario, evidence):
    """Given the Temporal batch evicted while question k+1's summarize activity was running,
    When the new pod's worker replays the history,
    Then no question answered before the eviction is asked again (the cut-off attempt may be, once)."""
    run = run_of(scenario, "temporal")
    check_no_reissue(run)
    evidence_of(run, evidence)


@pytest.mark.check("restate-all-answered")
def test_restate_batch_answers_every_question(scenario, evidence):
    """Given the Restate batch evicted mid-way,
    When restate-server has called the new pod with the same invocation,
    Then every question has exactly the LLM's answer to it, with its own search's sources, approved."""
    run = run_of(scenario, "restate")
    check_answers(run)
    evidence_of(run, evidence)


@pytest.mark.check("restate-resumes")
def test_restate_new_pod_resumes_at_the_cut_off_question(scenario, evidence):
    """Given the Restate batch evicted while question k+1's summarize step (ctx.run) was running,
    When the new pod replays the invocation's journal,
    Then no question answered before the eviction is asked again (the cut-off step may be, once)."""
    run = run_of(scenario, "restate")
    check_no_reissue(run)
    evidence_of(run, evidence)


@pytest.mark.check("side-by-side")
def test_runtimes_side_by_side_against_the_baseline(scenario, evidence):
    """Given the three runs,
    When they are put side by side (printed, and written to LAB10_REPORT_DIR as Markdown and SVG),
    Then the naive baseline answered every question but re-issued the call of every question it had
    answered before the eviction: it really lost that work, which is what the durable runtimes save."""
    for runtime in present(scenario):
        if scenario.runs[runtime].error is not None:
            raise NotChecked(f"not checked: the {runtime} run failed, so there is no table to compare",
                             revisit="Fix the failing checks above first.")
    naive = scenario.runs["naive"]
    check_answers(naive)
    lost = sum(naive.calls()[qid] - 1 for qid in naive.answered_at_kill)
    if lost < len(naive.answered_at_kill):
        raise CheckFailed("The naive baseline did not re-issue the calls it lost",
                          observed=f"{lost} repeated call(s) for {len(naive.answered_at_kill)} answered question(s)",
                          expected="every answered question asked again by the new pod",
                          revisit="(a course bug: the baseline is the course's own file)")
    runs = [scenario.runs[r] for r in present(scenario)]
    evidence.update(reissued=",".join(f"{r.runtime}:{sum(r.reissued().values())}" for r in runs),
                    in_flight=",".join(f"{r.runtime}:{r.window_repeats()}" for r in runs),
                    store_kib=",".join(f"{r.runtime}:{r.store_bytes / 1024:.0f}" for r in runs),
                    seed=scenario.seed,
                    table=str(Path(os.environ["LAB10_REPORT_DIR"]) / "capstone.md")
                    if os.environ.get("LAB10_REPORT_DIR") else "LAB10_REPORT_DIR=DIR keeps it")
    print("\n" + markdown_table(scenario))


# --- the table and the picture ------------------------------------------------------------------------------

def metrics(run: Run) -> dict[str, float]:
    llm_wasted = sum(run.reissued().values()) + run.window_repeats()
    wasted_text_min = (llm_wasted * TEXT_LLM_S + run.researched() * TEXT_FETCH_S) / 60
    next_s = run.to_next_answer_s()
    return {
        "answered before the eviction": len(run.answered_at_kill),
        "LLM calls re-issued (in-flight repeats apart)": sum(run.reissued().values()),
        "in-flight calls repeated (at-least-once window)": run.window_repeats(),
        "searches re-issued": run.researched(),
        "work redone, in the text's minutes": round(wasted_text_min, 1),
        "restart to next new answer (s, measured)": round(next_s, 2) if next_s is not None else -1,
        "store size (KiB)": round(run.store_bytes / 1024, 1),
        "lines of student code": run.code_lines,
    }


def markdown_table(scenario: Scenario) -> str:
    runs = [scenario.runs[r] for r in present(scenario)]
    table = [metrics(r) for r in runs]
    lines = [f"| {N} questions, seed {scenario.seed} | " + " | ".join(r.runtime for r in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    for name in table[0]:
        lines.append(f"| {name} | " + " | ".join(f"{m[name]:g}" for m in table) + " |")
    lines.append("| what the store holds | " + " | ".join(r.store_what for r in runs) + " |")
    full_min = N * (TEXT_LLM_S + TEXT_FETCH_S) / 60
    lines.append("")
    lines.append(f"One pass over the batch costs {N} x ({TEXT_LLM_S:g} s + {TEXT_FETCH_S:g} s) = {full_min:.1f} "
                 f"minutes in the text's time; latencies ran at x{TIME_SCALE:g}.")
    return "\n".join(lines)


def svg_bars(scenario: Scenario) -> str:
    from xml.sax.saxutils import escape

    runs = [scenario.runs[r] for r in present(scenario)]
    table = [metrics(r) for r in runs]
    names = list(table[0])
    colours = {"naive": "#dc2626", "langgraph": "#2563eb", "temporal": "#16a34a", "restate": "#9333ea"}
    panel_w, panel_h, cols = 330, 150, 4
    rows = (len(names) + cols - 1) // cols
    width, height = cols * panel_w + 20, rows * panel_h + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">Lab 10: {N} questions, one eviction '
           f'(seed {scenario.seed})</text>']
    for i, (runtime, colour) in enumerate(colours.items()):
        out.append(f'<rect x="{10 + i * 110}" y="30" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{26 + i * 110}" y="41">{runtime}</text>')
    for index, name in enumerate(names):
        px, py = 10 + (index % cols) * panel_w, 55 + (index // cols) * panel_h
        values = [max(0.0, float(m[name])) for m in table]
        top = max(values) or 1.0
        out.append(f'<text x="{px}" y="{py + 12}" font-weight="bold">{escape(name)}</text>')
        base, bar_w = py + panel_h - 25, 55
        for j, (run, value) in enumerate(zip(runs, values)):
            h = (panel_h - 55) * value / top
            x = px + 10 + j * (bar_w + 18)
            out.append(f'<rect x="{x}" y="{base - h:.1f}" width="{bar_w}" height="{h:.1f}" '
                       f'fill="{colours[run.runtime]}"><title>{run.runtime}: {value:g}</title></rect>')
            out.append(f'<text x="{x + bar_w / 2}" y="{base - h - 3:.1f}" text-anchor="middle">{value:g}</text>')
        out.append(f'<line x1="{px + 5}" y1="{base}" x2="{px + panel_w - 20}" y2="{base}" stroke="#9ca3af"/>')
    out.append("</svg>")
    return "\n".join(out)


def write_report(scenario: Scenario, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "capstone.md").write_text(markdown_table(scenario) + "\n")
    (folder / "capstone.svg").write_text(svg_bars(scenario) + "\n")
    (folder / "capstone.json").write_text(json.dumps(
        {"questions": N, "seed": scenario.seed, "time_scale": TIME_SCALE,
         "runs": {r: metrics(scenario.runs[r]) for r in present(scenario)}}, indent=1) + "\n")
