"""Lab 08 autograder: the §64.2.2 research agent as an Inngest function whose steps are memoized,
retried alone, fanned out for real, and that announces its report exactly once.

This lab runs on an in-process executor, not on an Inngest server: the course's executor.py, a copy
of the SDK's own `inngest.experimental.mocked.trigger` loop that runs parallel steps at once and
counts attempts per step, as a server does (docs/decisions/inngest-executor.md). It runs inside the
student's process (the course's runner.py, under labkit.attribution), so every request the function
makes reaches the course LLM and the course web with the step that made it.

Scenario, run once for the module: one REQUESTED event with a topic, a page count and a run id drawn
for this run. Against the course web (search + pages, every fetch in its ledger) and the course LLM:
- every page is *held* (it trickles and never ends) until the fetches in flight are as many as the
  steps the executor has running, so the fan-out's width is read from the web's ledger, not a clock;
- the search's first page answers its first fetch with HTTP 503; another, drawn per run, answers every
  fetch with 503, so its step runs out of retries and the page must be left out of the report;
- the LLM answers the run's first summarize request with HTTP 500, then a reply made for this run.
Evidence, all from outside the student's code: the web's and the LLM's ledgers (each request with the
step that sent it, labkit.attribution), and the executor's trace (each call of the function body,
each step attempt, each event sent).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from labkit import course, proc
from labkit.feedback import CheckFailed, NotChecked, student_error, tail, unfinished
from labkit.services import CourseLLM, free_port
from labkit.web import DEFAULT_CORPUS, WebEntry, load_corpus, rank

LAB = "08"
COMPLETED = "lab08/research.completed"  # as in the lab's models.py (a course file)
SUMMARY_TAG = "[lab08 summarize]"
SERVER_ENV = "LAB_SERVER_URL"  # set by `lab check 08 --server URL` (labkit.cli.SERVER_ENV)
NOTICE = ("This lab runs on the SDK's in-process executor (the course's copy of "
          "inngest.experimental.mocked), not on an Inngest server.")
if os.environ.get(SERVER_ENV):
    NOTICE = (f"This run used the Inngest server at {os.environ[SERVER_ENV]} (lab check --server, a mode "
              "untested in the course), not the in-process executor.")
HOLD_CHUNK_MS = 200  # a held page sends a byte every 0.2 s for as long as it is held
# The grader's last guard, not a verdict: a right program finishes long before, and a stuck one is seen
# stuck (labkit.proc.Watchdog) long before.
RUN_HANG_S = 600.0
PROBE_TIMEOUT_S = 5.0  # `--server URL`: one TCP connect before anything is started

CORPUS, _ = load_corpus([DEFAULT_CORPUS])
TOPICS = sorted({doc.topic for doc in CORPUS.values()
                 if sum(d.topic == doc.topic for d in CORPUS.values()) >= 3})

REVISIT_MEMO = ("§64.2.2 says a failed function \"resumes from that point\": it does not resume, it is called "
                "again from the top for every step, and only what ctx.step.run returns is memoized. Code "
                "outside step.run runs again on every call, so every side effect (a search, a download, an "
                "LLM call, an event) belongs inside a step, and the rest of the body must be deterministic.")
REVISIT_PARALLEL = ("The text's \"parallel fan-out\" awaits each step.run inside a for loop: one page at a time. "
                    "Plan them together: `await ctx.group.parallel(tuple(lambda u=u: ctx.step.run(f\"fetch-...\", "
                    "fetch_page, u) for u in urls))`; the server (and this executor) then runs them at once.")
REVISIT_RETRY = ("A step is retried when its function raises. Let the failure out of the step (raise_for_status(), "
                 "no try/except that returns a default), and give the OpenAI client max_retries=0: Inngest owns "
                 "retries, and it retries only the step that failed.")
REVISIT_EVENT = ("Send the completion event with `await ctx.step.send_event(\"step-id\", inngest.Event(name=..., "
                 "data=...))`: as a step it is memoized, so it goes out once however many times the body runs. "
                 "(The text's `step.send_event(\"research/completed\", data=...)` is a TypeError in inngest 0.5.)")


@dataclass
class Run:
    run_id: str
    topic: str
    max_pages: int
    key: str
    slugs: list[str]  # the pages the search returns, in rank order
    failing_slug: str  # answers its first fetch with 503
    dead_slug: str  # answers every fetch with 503: its step runs out of retries, the page is left out
    reply: str  # what the LLM answers this run's summarize request with
    base_url: str = ""
    exit_code: int | None = None
    log: str = ""
    outcome: dict[str, Any] | None = None
    trace: list[dict] = field(default_factory=list)
    fetches: list[WebEntry] = field(default_factory=list)
    searches: list[WebEntry] = field(default_factory=list)
    llm: list[Any] = field(default_factory=list)
    overlap: int = 0  # fetches in flight at once when the held pages were released
    steps_in_flight: list[str] = field(default_factory=list)  # the executor's running steps then
    release_reason: str = ""
    hung: str = ""
    unreachable: str = ""  # `--server URL`: why nothing could be sent to the server

    @property
    def urls(self) -> list[str]:
        """The URLs of the pages read (every page but the dead one), in the search's order."""
        return [f"{self.base_url}/doc/{slug}" for slug in self.slugs if slug != self.dead_slug]

    @property
    def attempts(self) -> int:
        """Attempts per step: the function's retries + 1, as the executor recorded them."""
        declared = [r.get("retries") for r in self.trace if r["event"] == "function"]
        return (declared[0] if declared and isinstance(declared[0], int) else 4) + 1

    @property
    def completed(self) -> bool:
        return bool(self.outcome) and self.outcome.get("status") == "completed"

    @property
    def body_calls(self) -> int:
        return sum(r["event"] == "body" for r in self.trace)

    @property
    def sent(self) -> list[dict]:
        return [r for r in self.trace if r["event"] == "sent"]


def step_of(origin: dict | None) -> dict | None:
    activity = (origin or {}).get("activity") or {}
    return activity if activity.get("type") == "inngest-step" else None


def read_trace(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def running_steps(trace: list[dict]) -> list[str]:
    """The steps the executor has dispatched and not finished (each may be between attempts)."""
    running: list[str] = []
    for record in trace:
        if record["event"] == "dispatch":
            running += record["steps"]
        elif record["event"] == "step-done" and record["step"] in running:
            running.remove(record["step"])
    return running


# --- the scenario --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def course_llm(tmp_path_factory):
    """The course LLM for this module (no Temporal needed): its own ledger, always stopped."""
    llm = CourseLLM(tmp_path_factory.mktemp("lab08-llm"), rules_files=[course.COURSE_TOML])
    try:
        llm.launch()
        yield llm
    finally:
        llm.stop()


def draw_run() -> Run:
    rng = random.Random()
    topic = rng.choice(TOPICS)
    available = len(rank(CORPUS, topic, 10))
    max_pages = rng.randint(3, min(4, available))
    slugs = [doc.slug for doc in rank(CORPUS, topic, max_pages)]
    nonce = uuid.uuid4().hex[:10]
    return Run(run_id=f"run-{uuid.uuid4().hex[:8]}", topic=topic, max_pages=max_pages,
               key=f"lab-08-{uuid.uuid4().hex[:8]}", slugs=slugs, failing_slug=slugs[0],
               dead_slug=rng.choice(slugs[1:-1]),  # neither the 503-once page nor the last (3 or 4 pages)
               reply=f"Report {nonce}: the {len(slugs)} sources on {topic} agree on the essentials and "
                     f"differ on cost; see [1]-[{len(slugs)}].")


@pytest.fixture(scope="module")
def scenario(course_llm, web_launched, lab_target, tmp_path_factory) -> Run:
    return run_scenario(course_llm.wait_ready(), web_launched.wait_ready(), lab_target,
                        tmp_path_factory.mktemp("lab08-run"))


def run_scenario(llm: CourseLLM, web, lab_target, workdir: Path) -> Run:
    """The whole scenario (also `lab demo 08`'s): draw the run, script the faults, run it, collect."""
    run = draw_run()
    run.base_url = web.url_for(run.key)
    trace_path = workdir / "trace.jsonl"
    for slug in run.slugs:
        web.set_behaviour(slug, caller=run.key, hold=True, chunk_ms=HOLD_CHUNK_MS, **faults(run, slug))
    llm.push_rules([{"name": f"lab08-{run.key}", "match": re.escape(f"{SUMMARY_TAG} run: {run.run_id}"),
                     "fail_first": 1, "fail_status": 500, "reply": run.reply}])
    env = lab_target.python_env(COURSE_WEB_URL=run.base_url, OPENAI_BASE_URL=llm.base_url,
                                OPENAI_API_KEY=run.key, LAB08_TRACE=str(trace_path),
                                HOME=str(workdir / "home"))
    (workdir / "home").mkdir()
    ledger = web.ledger()
    server = os.environ.get(SERVER_ENV)
    if server:  # `lab check 08 --server URL`: the same scenario on a real Inngest server (untested here)
        run_on_server(run, server.rstrip("/"), lab_target, env, workdir, web, ledger, trace_path)
        return collect(run, llm, ledger, trace_path)
    argv = [sys.executable, "-m", lab_target.module("runner"), "--topic", run.topic,
            "--max-pages", str(run.max_pages), "--run-id", run.run_id, "--trace", str(trace_path)]
    process = proc.start(argv, name="lab08-run", log_path=workdir / "run.log", env=env, cwd=workdir, student=True)
    try:
        watch_run(run, process, web, ledger, trace_path)
    finally:
        process.stop()
    run.exit_code = process.returncode
    run.log = process.output()
    for line in reversed(run.log.splitlines()):
        if line.startswith("{"):
            try:
                run.outcome = json.loads(line)
                break
            except ValueError:
                continue
    return collect(run, llm, ledger, trace_path)


def collect(run: Run, llm, ledger, trace_path: Path) -> Run:
    run.trace = read_trace(trace_path)
    run.fetches = ledger.fetches(run.key)
    run.searches = [e for e in ledger.entries(caller=run.key) if e.kind == "search"]
    run.llm = llm.ledger().entries(caller=run.key)
    return run


# --- `lab check 08 --server URL`: the same scenario on a real Inngest dev server --------------------
# UNTESTED in this course: the dev server (npm inngest-cli) downloads its binary at install, which
# cannot happen offline. Written from the SDK's serve() and Inngest's documented REST API
# (POST /e/{key}, GET /v1/events/{id}/runs).

def unreachable_server(server: str) -> str:
    """Why nothing answers at the --server URL (one TCP connect: refused at once when nothing listens), or ""."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"a TCP connection to {host}:{port} failed: {type(err).__name__}: {err}"
    return ""


def run_on_server(run: Run, server: str, lab_target, env: dict, workdir: Path, web, ledger, trace_path: Path) -> None:
    import httpx

    run.unreachable = unreachable_server(server)
    if run.unreachable:  # before the app starts: nothing to stop, a verdict at once
        release_pages(run, web)
        return
    port = free_port()
    env = dict(env, INNGEST_DEV=server, INNGEST_BASE_URL=server, LAB08_APP_ID=f"lab08-check-{run.key}")
    argv = [sys.executable, "-m", lab_target.module("serve"), "--port", str(port), "--trace", str(trace_path)]
    # An app the server calls must listen on a port, which the student sandbox forbids (labkit.limits: no TCP
    # bind). This mode is the student's own `lab check` against their own server, so the app runs unconfined,
    # still under labkit.attribution (every request tied to its step).
    from labkit import attribution

    app = proc.start(attribution.wrap_argv(argv, env), name="lab08-app", log_path=workdir / "app.log", env=env,
                     cwd=workdir)
    endpoint = f"http://127.0.0.1:{port}/api/inngest"
    try:
        drive_server_run(run, server, app, endpoint, web, ledger)
    except (httpx.HTTPError, KeyError, IndexError, ValueError, TypeError) as err:
        run.hung = f"talking to the Inngest server at {server} failed: {type(err).__name__}: {err}"
    finally:
        if not run.overlap:
            release_pages(run, web)
        app.stop()
        run.log = app.output()


def drive_server_run(run: Run, server: str, app, endpoint: str, web, ledger) -> None:
    import httpx

    deadline = time.monotonic() + proc.START_HANG_S
    while True:
        try:
            if httpx.get(endpoint, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if not app.alive or time.monotonic() > deadline:
            run.hung = f"the app (serve.py) did not answer on {endpoint}"
            run.log = app.output()
            return
        time.sleep(0.2)
    synced = httpx.put(endpoint, timeout=30)  # the SDK registers the app's functions with the server
    if synced.status_code >= 300:
        run.hung = f"the app could not sync with {server}: {synced.status_code} {synced.text[:300]}"
        return
    sent = httpx.post(f"{server}/e/lab08-check", timeout=30, json={
        "name": "lab08/research.requested",
        "data": {"run_id": run.run_id, "topic": run.topic, "max_pages": run.max_pages}})
    event_id = sent.json()["ids"][0]
    released, watchdog = False, proc.Watchdog(app.pid)
    deadline = time.monotonic() + RUN_HANG_S
    while time.monotonic() < deadline:
        runs = httpx.get(f"{server}/v1/events/{event_id}/runs", timeout=30).json().get("data") or []
        status = runs[0].get("status") if runs else None
        if status in ("Completed", "Failed", "Cancelled"):
            run.outcome = {"status": "completed" if status == "Completed" else "failed",
                           "output": runs[0].get("output"), "error": None if status == "Completed" else status}
            break
        in_flight = [f for f in ledger.fetches(run.key) if f.outcome == "started"]
        if not released and in_flight and (len(in_flight) >= len(run.slugs) or watchdog.stuck()):
            # A server's steps arrive as separate requests: released when every page is downloading, or
            # when the app sits waiting on the held pages (it has nothing else to do).
            run.overlap, run.steps_in_flight = len(in_flight), sorted(
                {s["id"] for f in in_flight if (s := step_of(f.origin))})
            release_pages(run, web)
            released = True
        time.sleep(0.2)
    else:
        run.hung = f"the server's run for event {event_id} had not ended after {RUN_HANG_S:.0f} s"


def faults(run: Run, slug: str) -> dict:
    if slug == run.failing_slug:
        return {"fail_first": 1, "fail_status": 503}
    if slug == run.dead_slug:
        return {"fail_first": 10_000, "fail_status": 503}  # every fetch: more than any retry policy asks
    return {}


def release_pages(run: Run, web) -> None:
    """Every page answers whole from now on (the failing page still fails a first fetch)."""
    for slug in run.slugs:
        web.set_behaviour(slug, caller=run.key, **faults(run, slug))


def watch_run(run: Run, process, web, ledger, trace_path: Path) -> None:
    """Hold the pages until every running step is downloading, release them, wait for the run to end.

    Judged by states, never by the clock: the pages are released when the fetches in flight are as many
    as the steps the executor runs (or a fetch comes from outside any step); a program that blocks its
    event loop (a sync HTTP call in an async step) never gets its other steps to their fetch and sits
    waiting on the held page, which labkit.proc.Watchdog sees (little CPU, seldom runnable) and which
    releases the pages too. Once released, a program that waits for something that never comes (or
    loops) is stopped with what it was doing; RUN_HANG_S is only the grader's last guard."""
    released = False
    watchdog = proc.Watchdog(process.pid)
    deadline = time.monotonic() + RUN_HANG_S
    try:
        while process.alive:
            in_flight = [f for f in ledger.fetches(run.key) if f.outcome == "started"]
            stuck = watchdog.stuck()
            if not released and in_flight:
                steps = running_steps(read_trace(trace_path))
                outside = [f for f in in_flight if step_of(f.origin) is None]
                if outside or len(in_flight) >= len(steps) or stuck:
                    run.overlap, run.steps_in_flight = len(in_flight), steps
                    run.release_reason = ("a fetch outside any step" if outside else "every running step is fetching"
                                          if len(in_flight) >= len(steps) else f"the program waits: it {stuck}")
                    release_pages(run, web)
                    released, watchdog = True, proc.Watchdog(process.pid)
                    continue
            elif stuck:
                steps = running_steps(read_trace(trace_path))
                run.hung = (f"the program {stuck} (steps running: {steps or 'none'}; "
                            f"{len(in_flight)} page download(s) in flight)")
                return
            if time.monotonic() > deadline:
                run.hung = f"the run was still going after {RUN_HANG_S:.0f} s"
                return
            time.sleep(0.05)
    finally:
        if not released:
            release_pages(run, web)


def completed(run: Run) -> Run:
    if not run.completed:
        raise NotChecked(f"not checked: the run did not complete (see runs-to-completion). {NOTICE}")
    return run


def where(entries) -> str:
    """Each request as "<page or llm> <status> from step 'id' attempt n", repeats counted."""
    parts: dict[str, int] = {}
    for e in entries:
        step = step_of(e.origin)
        label = f"step {step['id']!r} attempt {step['attempt']}" if step else "outside any step"
        what = "search" if getattr(e, "kind", None) == "search" else getattr(e, "slug", None) or "llm"
        text = f"{what} {e.status} from {label}"
        parts[text] = parts.get(text, 0) + 1
    return "; ".join(text + (f" (x{n})" if n > 1 else "") for text, n in parts.items()) or "none"


# --- the checks ----------------------------------------------------------------------------------

def by_step(entries) -> str:
    """Requests grouped by the step that sent them: "step 'x' attempts 0, 1 (503, 200)"."""
    groups: dict[str, list] = {}
    for e in entries:
        step = step_of(e.origin)
        label = f"step {step['id']!r}" if step else "outside any step"
        groups.setdefault(label, []).append(((step or {}).get("attempt"), e.status))
    parts = []
    for label, items in groups.items():
        attempts = ", ".join(str(a) for a, _ in items if a is not None)
        statuses = ", ".join(str(st) for _, st in items)
        parts.append(f"{label}" + (f" attempts {attempts}" if attempts else f" x{len(items)}") + f" ({statuses})")
    return "; ".join(parts) or "none"


@pytest.mark.check("runs-to-completion")
def test_the_function_runs_to_completion_on_the_executor(scenario, evidence):
    """Given a REQUESTED event with a topic, a page count and a run id drawn for this run,
    When the course's in-process executor drives the student's research_agent to its end,
    Then the run completes (a page's 503 and the LLM's 500 are retried, not fatal)."""
    run = scenario
    evidence.update(executor=f"server {os.environ[SERVER_ENV]}" if os.environ.get(SERVER_ENV) else "in-process (not a server)",
                    body_calls=run.body_calls, pages=run.max_pages)
    if run.unreachable:
        server = os.environ.get(SERVER_ENV, "")
        raise CheckFailed(f"Cannot reach the Inngest server at {server}: nothing answers there. {NOTICE}",
                          observed=run.unreachable,
                          expected=f"an Inngest dev server listening at {server}",
                          revisit="Nothing in your function: `lab check 08 --server URL` needs an Inngest dev server "
                                  "you run (the README's \"A real server\"). Without one, run `lab check 08` (the "
                                  "in-process executor).")
    if run.hung:
        raise CheckFailed(f"The run did not finish: {run.hung}. {NOTICE}",
                          observed=run.hung, expected="every step finishes (or fails and is retried) and the run completes",
                          details=tail(run.log))
    if run.completed:
        return
    error = (run.outcome or {}).get("error") or student_error(run.log) or f"exit status {run.exit_code}"
    if todo := unfinished(error + "\n" + run.log, LAB):
        todo.observed += f". {NOTICE}"
        raise todo
    observed = f"the run failed: {error}"
    if "StepUnexpectedError" in error or "when targeting a different step" in error:
        raise CheckFailed(
            f"A step id changed between calls of the function body, so the executor could not find the step "
            f"it had planned. {NOTICE}",
            observed=observed,
            expected="the same step ids in the same order on every call of the body",
            revisit="The body is called again from the top for every step; each call must plan the same steps. "
                    "Derive step ids from the input (the page's URL), never from uuid, random or the clock, and "
                    "keep anything random inside a step. " + REVISIT_MEMO,
            details=tail(run.log))
    if "StepError" in error and any(f.slug == run.dead_slug for f in run.fetches):
        raise CheckFailed(
            f"A page that never answers ran out of retries, and its failure ended the whole run. {NOTICE}",
            observed=f"{observed} ({run.dead_slug} answered 503 to all {sum(f.slug == run.dead_slug for f in run.fetches)} "
                     "fetches)",
            expected="that page left out of the report, the run completed with the others",
            revisit="Once a step has spent its retries, the executor (like a server) memoizes the failure and the "
                    "body gets inngest.StepError where it awaited the step. Catch it around that page's step "
                    "(a small `async def read_page(...)` with try/except inside the parallel group) and return None "
                    "for the page; summarize and report the pages that were read.",
            details=tail(run.log))
    if "required positional argument: 'step'" in error:
        raise CheckFailed(f"The handler takes the text's (ctx, step). {NOTICE}", observed=observed,
                          expected="`async def research_agent(ctx: inngest.Context)`; steps are ctx.step",
                          revisit="inngest 0.5 calls the handler with ctx only (§64.2.2's signature is wrong).",
                          details=tail(run.log))
    if "unexpected keyword argument 'data'" in error:
        raise CheckFailed(f"send_event was called the text's way. {NOTICE}", observed=observed,
                          expected="ctx.step.send_event(step_id, inngest.Event(name=..., data=...))",
                          revisit=REVISIT_EVENT, details=tail(run.log))
    raise CheckFailed(f"The run did not complete on the executor. {NOTICE}", observed=observed,
                      expected="status completed, with the report as the function's return value",
                      revisit="Run it by hand (README, \"Run it by hand\") and read the error; a step that raises "
                              "is retried, an error in the body outside steps fails the run.",
                      details=tail(run.log))


@pytest.mark.check("side-effects-in-steps")
def test_every_request_comes_from_inside_a_step(scenario, evidence):
    """Given the run, When the web's and the LLM's ledgers are read with the code that sent each request,
    Then every search, page fetch and LLM call was made inside a ctx.step.run (code outside a step runs
    again on every call of the body)."""
    run = completed(scenario)
    outside = [e for e in [*run.searches, *run.fetches, *run.llm] if step_of(e.origin) is None]
    evidence.update(requests=len(run.searches) + len(run.fetches) + len(run.llm), outside_steps=len(outside))
    if outside:
        kinds: dict[str, int] = {}
        for e in outside:
            what = getattr(e, "kind", None) or "LLM call"
            kinds[what] = kinds.get(what, 0) + 1
        listed = ", ".join(f"{what} x{n}" for what, n in kinds.items())
        raise CheckFailed(
            f"Side effects ran outside step.run, once per call of the function body: {listed} "
            f"(the body was called {run.body_calls} times). Memoization covers step results only. {NOTICE}",
            observed=f"{len(outside)} request(s) with no step behind them: {where(outside[:6])}",
            expected="every request made by a function that ctx.step.run runs",
            revisit=REVISIT_MEMO)


@pytest.mark.check("steps-memoized")
def test_each_side_effect_happens_once(scenario, evidence):
    """Given the run, in which one page fetch and the LLM call failed once and were retried, and one page failed
    every attempt, When the ledgers are counted, Then the search ran once, every page was fetched once (the
    failing page twice, the dead page once per attempt), and the LLM answered once after its 500: a retry or
    a later step never repeats a finished step's side effect."""
    run = completed(scenario)
    # Requests made outside any step are side-effects-in-steps' finding: here, what steps repeated.
    searches = [e for e in run.searches if step_of(e.origin)]
    fetches = [e for e in run.fetches if step_of(e.origin)]
    llm = [e for e in run.llm if step_of(e.origin)]
    counts = {slug: sum(f.slug == slug for f in fetches) for slug in run.slugs}
    expected = {slug: 2 if slug == run.failing_slug else run.attempts if slug == run.dead_slug else 1
                for slug in run.slugs}
    evidence.update(searches=len(run.searches), fetches=len(run.fetches), llm_calls=len(run.llm))
    problems = []
    if len(searches) > 1:
        problems.append(f"search ran {len(searches)} times: {by_step(searches)}")
    for slug in run.slugs:
        if counts[slug] > expected[slug]:
            pages = [f for f in fetches if f.slug == slug]
            problems.append(f"{slug} fetched {counts[slug]} times: {by_step(pages)}")
    ok_llm = [e for e in llm if e.ok]
    if len(ok_llm) > 1:
        problems.append(f"the LLM answered {len(ok_llm)} summarize requests: {by_step(llm)}")
    # Several first attempts of steps with the same id fetching the same page: the page steps' lambdas were
    # made in a loop without binding the url (`lambda: ...url...` sees the loop's last url when it runs).
    for slug in run.slugs:
        firsts = [s["id"] for f in fetches if f.slug == slug and (s := step_of(f.origin)) and s["attempt"] == 0]
        twice = sorted({i for i in firsts if firsts.count(i) > 1})
        if twice:
            never = [other for other in run.slugs if counts[other] == 0]
            raise CheckFailed(
                f"{len(firsts)} steps named {twice[0]!r} all fetched {slug}"
                + (f", and {', '.join(never)} was never fetched" if never else "")
                + f": the parallel group's lambdas all used the loop's last URL. {NOTICE}",
                observed=f"{slug}: {by_step([f for f in fetches if f.slug == slug])}",
                expected="one step per page, each fetching its own page once",
                revisit="A lambda made in a loop reads the loop variable when it runs, after the loop ended: bind it "
                        "when the lambda is made, `lambda url=url: ctx.step.run(f\"fetch-...\", fetch_page, url)`, "
                        "and derive the step id from that url. " + REVISIT_PARALLEL)
    if problems:
        repeated_by = {s["id"] for e in [*searches, *fetches, *llm] if (s := step_of(e.origin))}
        raise CheckFailed(
            f"A finished side effect happened again when a step was retried or ran again. {NOTICE}",
            observed="; ".join(problems),
            expected=f"search once; each page once (the 503-once page twice, the dead page once per attempt: "
                     f"{run.attempts}); the LLM once after its 500",
            revisit="One side effect per step: a step that fetches every page and then summarizes re-fetches "
                    "them all when the summary is retried. Give each page and the LLM call a step of its own, "
                    f"with an id that stays the same (steps seen: {sorted(repeated_by)}). " + REVISIT_MEMO)


@pytest.mark.check("failed-step-retried")
def test_a_failed_step_is_retried_alone(scenario, evidence):
    """Given a page that answers its first fetch with 503, one that answers every fetch with 503, and an LLM that
    answers the first summarize with 500, When the run completes, Then each failure failed its step's attempt and
    the same step ran again (attempt 0, then 1; the dead page once per attempt, then given up): the retries came
    from the executor, not from a loop or a client retrying inside the step."""
    run = completed(scenario)
    page = [f for f in run.fetches if f.slug == run.failing_slug]
    evidence.update(failing_page=run.failing_slug, page_fetches=len(page), llm_calls=len(run.llm),
                    dead_page_fetches=sum(f.slug == run.dead_slug for f in run.fetches))
    if not page:
        raise NotChecked(f"not checked: the page that answers 503 once ({run.failing_slug}) was never fetched "
                         f"(see steps-memoized and event-payload). {NOTICE}")
    dead = [f for f in run.fetches if f.slug == run.dead_slug]
    dead_steps = [step_of(f.origin) for f in dead]
    dead_attempts = sorted((s or {}).get("attempt", -1) for s in dead_steps)
    dead_ids = {(s or {}).get("id") for s in dead_steps}
    shared = any(f.slug != run.dead_slug and (step_of(f.origin) or {}).get("id") in dead_ids for f in run.fetches)
    # (a step that also fetched other pages is steps-memoized's and parallel-fan-out's finding, not this one's)
    if dead and not shared and dead_attempts == [0]:
        raise CheckFailed(
            f"The page that never answers ({run.dead_slug}) failed once and its step was never tried again, yet "
            f"the run completed: the failure was swallowed inside the step. {NOTICE}",
            observed=by_step(dead),
            expected=f"attempts 0..{run.attempts - 1} of its step, each failing, then the page left out",
            revisit=REVISIT_RETRY)
    if dead and not shared and dead_attempts != list(range(run.attempts)):
        raise CheckFailed(
            f"The page that never answers ({run.dead_slug}) was fetched {len(dead)} time(s), by attempts "
            f"{dead_attempts}; its step has {run.attempts} attempts (retries + 1). {NOTICE}",
            observed=by_step(dead),
            expected=f"attempts 0..{run.attempts - 1} of one step, one fetch each, then the page given up",
            revisit=REVISIT_RETRY)
    for what, entries, failed in (("page " + run.failing_slug, page, lambda e: e.status == 503),
                                  ("LLM summarize", run.llm, lambda e: e.status == 500)):
        steps = [step_of(e.origin) for e in entries]
        if len(entries) < 2 or not failed(entries[0]):
            raise CheckFailed(
                f"The {what} failed once and was never tried again, yet the run completed: the failure was "
                f"swallowed inside the step. {NOTICE}",
                observed=f"{len(entries)} request(s): {where(entries)}",
                expected="the failed request, then the same step's retry (attempt 1) that succeeds",
                revisit=REVISIT_RETRY)
        attempts = [(s or {}).get("attempt") for s in steps[:2]]
        ids = {(s or {}).get("id") for s in steps[:2]}
        if attempts[0] == attempts[1] and len(ids) == 1:
            raise CheckFailed(
                f"The {what} was retried inside one step attempt (by the HTTP/OpenAI client or a loop), so "
                f"the executor never saw the failure. {NOTICE}",
                observed=where(entries[:2]),
                expected="attempt 0 fails, attempt 1 of the same step succeeds",
                revisit=REVISIT_RETRY)
        if len(ids) != 1:
            raise CheckFailed(f"The {what}'s retry came from another step than its failure. {NOTICE}",
                              observed=where(entries[:2]), expected="the same step id, attempts 0 and 1",
                              revisit=REVISIT_RETRY)


@pytest.mark.check("parallel-fan-out")
def test_pages_are_fetched_at_once(scenario, evidence):
    """Given every page held (it trickles and does not end) until the fetches in flight are as many as the
    steps the executor is running, When the pages are released, Then every page was in flight at once:
    the fan-out is ctx.group.parallel, not a loop that awaits each step."""
    run = completed(scenario)
    evidence.update(pages=len(run.slugs), in_flight_at_once=run.overlap, steps_running=len(run.steps_in_flight))
    if run.overlap == 0:
        raise NotChecked(f"not checked: no page download was ever in flight while the pages were held "
                         f"(see steps-memoized). {NOTICE}")
    planned_together = any(r["event"] == "dispatch" and len(r["steps"]) >= len(run.slugs) for r in run.trace)
    # Every page in flight at once; or the group planned them all and every one still running was fetching
    # (a step that ended early, e.g. by swallowing its 503, is retried-alone's finding, not this one's).
    every_running_step_fetched = run.overlap >= len(run.steps_in_flight) > 0
    if run.overlap < len(run.slugs) and not (planned_together and every_running_step_fetched):
        if planned_together:
            raise CheckFailed(
                f"The page steps were planned together, but only {run.overlap} of {len(run.slugs)} downloads were "
                f"in flight at once: a blocking call inside an async step holds the event loop. {NOTICE}",
                observed=f"{run.overlap} fetch(es) in flight while the executor ran {run.steps_in_flight}",
                expected=f"all {len(run.slugs)} pages downloading at the same time",
                revisit="Use an async HTTP client (httpx.AsyncClient) in the step function, so parallel steps can "
                        "wait on the network together.")
        fetched_by = {s["id"] for f in run.fetches if (s := step_of(f.origin))}
        if len(fetched_by) == 1 and len(run.slugs) > 1:
            raise CheckFailed(
                f"Every page was fetched inside one step ({fetched_by.pop()!r}): there is no step per page for "
                f"ctx.group.parallel to plan, so a page's retry repeats them all. {NOTICE}",
                observed=f"{len(run.slugs)} pages, one step fetching them: {by_step(run.fetches)}",
                expected=f"{len(run.slugs)} page steps planned together and in flight at once",
                revisit=REVISIT_PARALLEL)
        raise CheckFailed(
            f"The fan-out is sequential: {run.overlap} of {len(run.slugs)} pages were downloading at once "
            f"(the executor was running {run.steps_in_flight or 'no step'}). {NOTICE}",
            observed=f"at most {run.overlap} page fetch(es) in flight; each page was held until every running step "
                     "was fetching",
            expected=f"all {len(run.slugs)} pages in flight at once",
            revisit=REVISIT_PARALLEL)


@pytest.mark.check("event-sent-once")
def test_the_completion_event_is_sent_once_from_a_step(scenario, evidence):
    """Given the run, When the executor's record of sent events is read,
    Then exactly one COMPLETED event went out, sent by a step (memoized: once, however often the body ran)."""
    run = completed(scenario)
    sends = [s for s in run.sent if any(e.get("name") == COMPLETED for e in s["events"])]
    evidence.update(events_sent=len(sends), body_calls=run.body_calls)
    outside = [s for s in sends if not s.get("step")]
    if outside and len(sends) == 1:
        raise CheckFailed(
            f"The {COMPLETED} event was sent with {outside[0]['via']} in the function body, outside any step. "
            f"It went out once here only because it is the body's last line; nothing memoizes it, so a retried "
            f"last call (or a step added after it) sends it again. {NOTICE}",
            observed=f"1 send, {outside[0]['via']} outside any step (the body ran {run.body_calls} times)",
            expected="one send, from ctx.step.send_event",
            revisit=REVISIT_EVENT + " " + REVISIT_MEMO)
    if outside or len(sends) != 1:
        how = ", ".join(sorted({s['via'] + (f" in step {s['step']!r}" if s.get('step') else ' outside any step')
                                for s in sends})) or "never"
        raise CheckFailed(
            f"The {COMPLETED} event went out {len(sends)} time(s) ({how}); the body ran {run.body_calls} times. "
            f"{NOTICE}",
            observed=f"{len(sends)} send(s): {how}",
            expected="one send, from ctx.step.send_event",
            revisit=REVISIT_EVENT + " " + REVISIT_MEMO)


@pytest.mark.check("event-payload")
def test_the_event_carries_the_report(scenario, evidence):
    """Given the run's id and topic, the search's pages and the LLM's reply (all drawn or made for this run),
    When the COMPLETED event's data is read, Then it holds run_id, topic, the page URLs in the search's order
    and the LLM's summary, exactly; the summary was asked for with every page's text, in that order; and the
    function returns the same report."""
    run = completed(scenario)
    sends = [e for s in run.sent for e in s["events"] if e.get("name") == COMPLETED]
    if not sends:
        raise NotChecked("not checked: no COMPLETED event was sent (see event-sent-once)")
    data = sends[-1].get("data") or {}
    want = {"run_id": run.run_id, "topic": run.topic, "sources": run.urls, "summary": run.reply}
    wrong = {k: data.get(k, "<missing>") for k, v in want.items() if data.get(k) != v}
    evidence.update(sources=len(data.get("sources") or []))
    if wrong:
        raise CheckFailed(
            f"The event's data is not this run's report: {', '.join(wrong)} differ. {NOTICE}",
            observed=json.dumps(wrong, default=str)[:800],
            expected=json.dumps({k: want[k] for k in wrong}, default=str)[:800],
            revisit="Downstream functions know the run only from the event: put the request's run_id and topic, "
                    "the URLs the search returned (in its order) and the summary the LLM step returned into "
                    "inngest.Event(name=COMPLETED, data=...).")
    # The summary was made from the pages the fetch steps returned: each page read whole has its text in the
    # summarize prompt, in the search's order (a page given up is left to failed-step-retried).
    answered = [e for e in run.llm if e.ok]
    read = [slug for slug in run.slugs if any(f.slug == slug and f.outcome == "complete" for f in run.fetches)]
    if answered:
        prompt = answered[-1].prompt
        found = [(prompt.find(CORPUS[slug].text.strip()), slug) for slug in read]
        missing = [slug for at, slug in found if at < 0]
        order = [slug for _, slug in sorted((at, slug) for at, slug in found if at >= 0)]
        if missing or order != [slug for slug in read if slug not in missing]:
            raise CheckFailed(
                f"The summary was not made from the pages the steps read: "
                f"{'missing ' + ', '.join(missing) if missing else 'pages out of the search order'}. {NOTICE}",
                observed=f"texts found in the summarize prompt, in order: {order}",
                expected=f"every page's text, in the search's order: {read}",
                revisit="Pass what the fetch steps returned (ctx.group.parallel returns their results in the order "
                        "of the callables) to the summarize step: a memoized step result is the data the next "
                        "step works on.")
    output = (run.outcome or {}).get("output")
    if isinstance(output, dict) and any(output.get(k) != v for k, v in want.items()):
        raise CheckFailed(f"The function returns another report than the one it announced. {NOTICE}",
                          observed=json.dumps(output, default=str)[:800], expected=json.dumps(want)[:800],
                          revisit="Return the same ResearchCompleted you sent in the event.")
