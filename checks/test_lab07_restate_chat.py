"""Lab 07 autograder: a durable chat session as a Restate virtual object.

Scenario, run once for the module against a real restate-server (npm), the course LLM (Chat
Completions, a scripted tool call) and the notification sink (the team chat):
  Given the student's ChatSession served by its own process (hypercorn, on a socket the check
    bound), registered with restate-server, and session ids, questions, channels and replies made
    up for this run (a hard-coded answer cannot match them):
  When session A asks a question whose script is: model -> post_message -> model,
    and the sink holds the post's answer until the check has seen the first model call and the
    post recorded; the check then makes the course LLM hold the second model call (a latency far
    beyond the scenario), releases the post, waits until the second call has reached the LLM, and
    SIGKILLs the service; a new service starts as on another host (fresh cwd, TMPDIR, HOME) on the
    same port, and restate-server retries the invocation there;
  And session A asks again (same process), session C asks a question whose post is held while
    C asks again, D asks, and C's history is read; then the service is stopped, started again on
    another host, and A asks a third time;
  And a second crash at another moment: session B asks a question whose post the sink holds (the
    chat has it, its answer is held), the service is SIGKILLed then, and a new one on another host
    retries B's ask, post included (its result never reached the journal);
  Then each check below reads its evidence from outside the student's process: the course LLM's
    ledger (each request, and the pid and program that sent it: labkit.attribution), the sink's
    attempts and deliveries, and restate-server's own introspection (the admin SQL API:
    sys_invocation, sys_journal, state).

No verdict waits on the clock: every wait is for a state (a held post, a ledger entry, an
invocation's status); HANG_S only ends a run that is stuck, and says what it was waiting for.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from labkit import proc, restate
from labkit.feedback import FRAME_LINE, CheckFailed, NotChecked, student_error, tail, unfinished
from labkit.llm import LedgerEntry
from labkit.sink import Attempt
from scenario_lab07_restate_chat import SERVICE, conversation_lacks, run_steps, script_rule, start_service

LAB = "07"
HANG_S = 300.0  # a hang guard, never a verdict: every wait ends as soon as its state is there
HELD_MS = 3_600_000  # the second model call of the crash run: held far beyond anything the run waits for
pytestmark = pytest.mark.timeout(3 * HANG_S)

REVISIT_JOURNAL = ("§64.2.4 and the lab README: Restate journals ctx.* calls, not every await. A model call "
                   "made directly from the handler is not in the journal, so the retried invocation makes it "
                   "again; wrap each step in `await ctx.run_typed(\"name\", fn, options, *args)`, so the retry "
                   "replays its recorded result.")
REVISIT_JOURNAL = REVISIT_JOURNAL.replace("A model call made directly", "A model or tool call made directly "
                                          "(await llm.complete(...), await tools.run_tool(...))")
REVISIT_STATE = ("A virtual object's state lives in restate-server, not in your process: read the conversation "
                 "with `await ctx.get(\"conversation\", type_hint=list[dict]) or []`, append this question's "
                 "messages, and store it with `ctx.set(\"conversation\", conversation)` before returning.")
REVISIT_SHARED = ("Declare history with `@chat_session.handler(kind=\"shared\")` and an ObjectSharedContext: "
                  "a shared handler only reads state, so Restate runs it beside the running ask instead of "
                  "queueing it behind (an exclusive handler waits for the object's lock).")
REVISIT_KEY = ("A step that was running when the service died runs again on the retry: its result is not in the "
               "journal. The chat delivers each Idempotency-Key once, so the key must be the same on every attempt "
               "of one tool call: derive it from what the journal replays, the invocation id (ctx.request().id) "
               "and the model's call id, or ctx.uuid() (Restate seeds it per invocation). uuid.uuid4() or the "
               "clock, called in the handler, give every attempt a new key.")
REVISIT_DETERMINISM = ("On a retry Restate replays the journal: the handler must make the same ctx.* calls in the "
                       "same order with the same names. A step named from the clock, a random number or a uuid "
                       "does not match its journal entry, and the invocation can never finish.")


def nonce() -> str:
    return uuid.uuid4().hex[:6]


@dataclass
class Ask:
    """One question the scenario asks, with the course LLM's script for it."""

    name: str
    session: str
    question: str
    reply: str
    post: dict[str, str] | None = None  # the scripted post_message arguments, if the script posts
    invocation: str = ""
    answer: Any = None

    @property
    def marker(self) -> str:
        return self.question.rsplit(" ", 1)[-1]

    def rule(self, latency_ms: int = 0) -> dict[str, Any]:
        return script_rule(f"lab07-check-{self.marker}", self.marker, self.reply, self.post, latency_ms)


def make_asks() -> dict[str, Ask]:
    words = random.Random().sample(["parcel", "refund", "invoice", "voucher", "return", "delivery", "size",
                                    "colour", "warranty", "account"], 7)
    channels = random.Random().sample(["#support", "#refunds", "#warehouse", "#billing", "#escalations"], 3)
    sessions = {s: f"{s.lower()}-{nonce()}" for s in "ACDB"}
    asks = {}
    for name, session, word, post in (("A1", "A", words[0], channels[0]), ("A2", "A", words[1], None),
                                      ("C1", "C", words[2], channels[1]), ("C2", "C", words[3], None),
                                      ("D1", "D", words[4], None), ("A3", "A", words[5], None),
                                      ("B1", "B", words[6], channels[2])):
        marker = nonce()
        asks[name] = Ask(
            name, sessions[session], f"Question about my {word}, ref {marker}",
            f"Your {word} request {marker} is with the team; expect an answer today.",
            {"channel": post, "text": f"Customer {sessions[session]} needs help with a {word} ({marker})."}
            if post else None)
    return asks


@dataclass
class Scenario:
    asks: dict[str, Ask]
    token: str
    services: list[proc.ManagedProcess] = field(default_factory=list)
    server: restate.RestateServer | None = None
    failure: CheckFailed | None = None
    phase: str = "start"
    killed_pid: int | None = None
    journal_at_kill: list[dict] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    deliveries: list = field(default_factory=list)
    journals: dict[str, list[dict]] = field(default_factory=dict)
    states: dict[str, dict] = field(default_factory=dict)
    statuses_while_held: dict[str, str] = field(default_factory=dict)
    history_while_held: Any = None
    history_a: Any = None
    state_c_while_held: dict = field(default_factory=dict)  # session C's stored state while C1 was held
    state_after_a1: dict = field(default_factory=dict)  # session A's stored state once A1 completed
    post_retry_s: float = 0.0  # the second crash: from B1's ask to its completion on the new service

    def entries(self, ask: Ask) -> list[LedgerEntry]:
        return [e for e in self.ledger if ask.marker in (e.prompt or "")]

    def requires(self, check: str, phase: str) -> None:
        """A check that needs the scenario to have got past `phase`: the check that owns the phase
        where the scenario stopped reports why; the others are NOT CHECKED."""
        if self.failure is None or PHASES.index(self.phase) > PHASES.index(phase):
            return
        if PHASE_OWNER[self.phase] == check:
            raise self.failure
        raise NotChecked(f"not checked: the scenario stopped before it could observe this ({self.failure.summary})")


PHASES = ["start", "crash", "memory", "single-writer", "restart", "post-retry", "done"]
PHASE_OWNER = {"start": "crash-resume", "crash": "crash-resume", "memory": "conversation-in-state",
               "single-writer": "single-writer", "restart": "conversation-in-state", "post-retry": "tool-journaled"}


def short_failure(failure: str) -> str:
    """Restate's last_failure without the SDK's traceback: the error line, and where in chat.py it was raised."""
    lines = failure.strip().splitlines()
    where = [f"{Path(m.group(1)).name}:{m.group(2)}" for m in map(FRAME_LINE.match, lines)
             if m and Path(m.group(1)).name == "chat.py"]
    return lines[0][:400] + (f" (raised at {where[-1]})" if where else "")


class Lab07Harness:
    """The student's service as real processes, each as on a host of its own, on one port."""

    def __init__(self, target, llm, sink, server: restate.RestateServer, workdir: Path, token: str):
        self.target, self.llm, self.sink, self.server, self.workdir, self.token = target, llm, sink, server, workdir, token
        self.port = restate.free_port()
        self.processes: list[proc.ManagedProcess] = []

    def start_service(self) -> proc.ManagedProcess:
        n = len(self.processes) + 1
        service = start_service(self.target, self.llm, self.sink, self.token, self.port, self.workdir / f"host{n}",
                                self.workdir / f"service{n}.log", tool_timeout_s=HANG_S)
        self.processes.append(service)
        return service

    def register(self, service: proc.ManagedProcess) -> None:
        deadline = time.monotonic() + HANG_S
        last = ""
        while time.monotonic() < deadline:
            if not service.alive:
                raise self.service_died(service, "before restate-server could register it")
            try:
                found = self.server.register(f"http://127.0.0.1:{self.port}")
            except restate.ServiceError as err:
                last = str(err)
                time.sleep(0.1)
                continue
            if SERVICE not in [s["name"] for s in found["services"]]:
                raise CheckFailed(f"The service serves no virtual object named {SERVICE}",
                                  observed=f"services: {[s['name'] for s in found['services']]}",
                                  expected=f'chat_session = restate.VirtualObject("{SERVICE}") (models.SERVICE)',
                                  revisit="Keep the object's name from models.py: clients call /ChatSession/<session>/ask.")
            handlers = {h["name"]: h["ty"] for s in found["services"] if s["name"] == SERVICE for h in s["handlers"]}
            if "ask" not in handlers or "history" not in handlers:
                raise CheckFailed("ChatSession lacks a handler the lab asks for",
                                  observed=f"handlers: {handlers}", expected="ask and history",
                                  revisit="Decorate both functions with @chat_session.handler(...).")
            return
        raise CheckFailed("restate-server could not register the service", observed=tail(last, 5),
                          expected="the admin API registers the deployment", details=tail(service.output()))

    def service_died(self, service: proc.ManagedProcess, when: str) -> CheckFailed:
        log = service.output()
        error = student_error(log) or f"exit status {service.returncode}"
        return unfinished(error, LAB) or CheckFailed(
            f"The service exited {when}: {error}", observed=f"exit status {service.returncode}",
            expected="python -m <lab>.service keeps serving until it is stopped",
            revisit="Run the service by hand (see the README) and fix what it prints.", details=tail(log))

    def wait(self, what: str, condition, ask: Ask | None = None, service: proc.ManagedProcess | None = None):
        """Until condition() is truthy; a handler failure or a dead service becomes the verdict."""
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if service is not None and not service.alive:
                raise self.service_died(service, f"while the check waited for {what}")
            if ask is not None and ask.invocation:
                self.raise_failure(ask)
            time.sleep(0.05)
        raise CheckFailed(f"The run got stuck: still waiting for {what} after {HANG_S:.0f} s",
                          observed=self.describe(ask) if ask else "", expected=what,
                          details=tail(self.processes[-1].output()) if self.processes else "")

    def describe(self, ask: Ask) -> str:
        row = self.server.invocation(ask.invocation) if ask.invocation else None
        return f"invocation {ask.invocation}: {row}" if row else "no invocation yet"

    def raise_failure(self, ask: Ask) -> None:
        """An ask whose handler keeps failing: say what it raised (a TODO, a journal mismatch, an error)."""
        row = self.server.invocation(ask.invocation) or {}
        failure = str(row.get("last_failure") or "")
        if not failure or int(row.get("retry_count") or 0) < 2:
            return
        if "TODO(lab07)" in failure:
            todo = failure[failure.index("TODO(lab07)"):]
            raise unfinished(re.split(r"['\"]\)|\\n|\n", todo)[0].rstrip("'\""), LAB)
        if "mismatch" in failure.lower() or str(row.get("last_failure_error_code")) in ("570", "571"):
            raise CheckFailed(
                f"{ask.name}'s ask cannot finish: its retry does not match its journal",
                observed=f"restate-server: {failure[:600]}",
                expected="the retried handler makes the same ctx.* calls, in the same order, with the same names",
                revisit=REVISIT_DETERMINISM, evidence={"retries": row.get("retry_count")})
        if any(word in failure for word in ("connect", "Connection", "reset", "closed")):
            return  # the service is gone or restarting: Restate will retry
        raise CheckFailed(f"{ask.name}'s ask fails every time it runs", observed=f"restate-server: {short_failure(failure)}",
                          expected="ask answers the question", revisit="Run it by hand (README) and read the service's output.",
                          details=tail(self.processes[-1].output()) if self.processes else "")

    def not_finished(self, ask: Ask, waiting_for: str) -> bool:
        """True while the ask runs; an ask that completed before doing what the check waits for is the verdict."""
        if self.status(ask) != "completed":
            return True
        raise CheckFailed(f"{ask.name}'s ask finished before {waiting_for}",
                          observed=f"model calls: {len([e for e in self.ledger() if ask.marker in e.prompt])}, posts: "
                                   f"{len([a for a in self.sink.attempts(caller=self.token) if ask.marker in a.text])}, "
                                   f"answer: {self.server.output(ask.invocation)!r}",
                          expected="the loop: the model, the post it asks for, the model again with the post's result",
                          revisit="In ask, run every tool call of the model's message, append each result, and call "
                                  "the model again until its message has no tool calls.")

    def status(self, ask: Ask) -> str:
        row = self.server.invocation(ask.invocation)
        return (row or {}).get("status", "")

    def ledger(self) -> list[LedgerEntry]:
        return self.llm.ledger().entries(caller=self.token)


def run_scenario(h: Lab07Harness, s: Scenario) -> None:
    a1, a2, c1, c2, d1, a3 = (s.asks[n] for n in ("A1", "A2", "C1", "C2", "D1", "A3"))
    h.llm.push_rules([ask.rule() for ask in s.asks.values()])
    first = h.start_service()
    h.register(first)

    # --- the crash: after the first model call and the post are done, during the second model call
    s.phase = "crash"
    hold = h.sink.hold(caller=h.token, channel=a1.post["channel"], times=1, release_after_s=2 * HANG_S)
    a1.invocation = h.server.send(SERVICE, a1.session, "ask", a1.question)
    h.wait("the first model call and the post to the team chat (held by the sink)",
           lambda: any(a.held for a in h.sink.attempts(caller=h.token))
           or not h.not_finished(a1, "posting to the team chat"), a1, first)
    before_release = [e for e in h.ledger() if a1.marker in e.prompt]
    if len(before_release) != 1:
        raise CheckFailed("The post was sent before the model asked for it, or the model was asked twice",
                          observed=f"{len(before_release)} model calls before the post", expected="1",
                          revisit="ask: one model call, then the tool call the model asked for.")
    h.llm.push_rules([a1.rule(latency_ms=HELD_MS)])  # the next model call for A1 is held
    h.sink.release(hold)
    h.wait("the second model call (the one the kill interrupts)",
           lambda: len([e for e in h.ledger() if a1.marker in e.prompt]) >= 2
           or not h.not_finished(a1, "asking the model again with the post's result"), a1, first)
    s.journal_at_kill = h.server.journal(a1.invocation)
    s.killed_pid = first.pid
    first.kill()
    h.llm.push_rules([a1.rule()])
    second = h.start_service()  # the same port, on another host: restate-server retries A1 there
    h.wait("A1's ask to complete on the restarted service",
           lambda: h.status(a1) == "completed", a1, second)
    a1.answer = h.server.output(a1.invocation)
    s.state_after_a1 = h.server.state(SERVICE, a1.session).get(a1.session, {})

    # --- memory within one process, then the single writer and the shared history
    s.phase = "memory"
    a2.invocation = h.server.send(SERVICE, a2.session, "ask", a2.question)
    h.wait("A2's ask to complete", lambda: h.status(a2) == "completed", a2, second)
    a2.answer = h.server.output(a2.invocation)
    s.phase = "single-writer"
    hold = h.sink.hold(caller=h.token, channel=c1.post["channel"], times=1, release_after_s=2 * HANG_S)
    c1.invocation = h.server.send(SERVICE, c1.session, "ask", c1.question)
    h.wait("C1's post to the team chat (held by the sink)",
           lambda: any(a.held and a.channel == c1.post["channel"] for a in h.sink.attempts(caller=h.token))
           or not h.not_finished(c1, "posting to the team chat"), c1, second)
    c2.invocation = h.server.send(SERVICE, c2.session, "ask", c2.question)
    d1.invocation = h.server.send(SERVICE, d1.session, "ask", d1.question)
    history = Ask("history-C", c1.session, "", "")
    history.invocation = h.server.send(SERVICE, c1.session, "history")
    h.wait("D1 (another session) to finish while C1 is held", lambda: h.status(d1) == "completed", d1, second)
    # "pending": queued in the object's inbox behind the running exclusive handler.
    settled = ("pending", "inboxed", "completed", "running", "backing-off", "suspended", "paused")
    h.wait("restate-server to queue or run C2", lambda: h.status(c2) in settled, c2, second)
    # A shared handler answers at once (completed); an exclusive one waits in the inbox (pending).
    h.wait("restate-server to answer or queue C's history",
           lambda: h.status(history) in ("completed", "pending", "backing-off", "paused"), None, second)
    s.statuses_while_held = {"C2": h.status(c2), "history": h.status(history), "C1": h.status(c1),
                             "C2 model calls": str(len([e for e in h.ledger() if c2.marker in e.prompt]))}
    if s.statuses_while_held["history"] == "completed":
        s.history_while_held = h.server.output(history.invocation)
    s.state_c_while_held = h.server.state(SERVICE, c1.session).get(c1.session, {})  # C1 is held: it cannot change
    h.sink.release(hold)
    for ask in (c1, c2, d1):
        h.wait(f"{ask.name} to complete", lambda ask=ask: h.status(ask) == "completed", ask, second)
        ask.answer = h.server.output(ask.invocation)
    h.wait("C's history to answer", lambda: h.status(history) == "completed", None, second)
    if s.history_while_held is None:
        s.history_while_held = h.server.output(history.invocation)

    # --- a clean restart, on another host: what the session remembers must come from Restate
    s.phase = "restart"
    second.stop()
    third = h.start_service()
    a3.invocation = h.server.send(SERVICE, a3.session, "ask", a3.question)
    h.wait("A3's ask to complete", lambda: h.status(a3) == "completed", a3, third)
    a3.answer = h.server.output(a3.invocation)
    history_a = Ask("history-A", a1.session, "", "")
    history_a.invocation = h.server.send(SERVICE, a1.session, "history")
    h.wait("A's history to answer", lambda: h.status(history_a) == "completed", history_a, third)
    s.history_a = h.server.output(history_a.invocation)

    # --- a second crash, at another moment: while the chat holds B1's post (received, its answer held)
    s.phase = "post-retry"
    started = time.monotonic()
    b1 = s.asks["B1"]
    hold = h.sink.hold(caller=h.token, channel=b1.post["channel"], times=1, release_after_s=2 * HANG_S)
    b1.invocation = h.server.send(SERVICE, b1.session, "ask", b1.question)
    h.wait("B1's post to the team chat (held by the sink)",
           lambda: any(a.held and a.channel == b1.post["channel"] for a in h.sink.attempts(caller=h.token))
           or not h.not_finished(b1, "posting to the team chat"), b1, third)
    third.kill()
    h.sink.release(hold)  # the retried post is answered at once
    fourth = h.start_service()  # another host again: restate-server retries B1 there, the post included

    def b1_completed() -> bool:
        # restate-server retries after a backoff that grows with each failed attempt; once the new service
        # serves, retry now (the admin API's resume), as an operator would
        status = h.status(b1)
        if status == "backing-off" and "Running on" in fourth.output():
            with contextlib.suppress(restate.ServiceError):
                h.server.resume(b1.invocation)
        return status == "completed"

    h.wait("B1's ask to complete on the restarted service", b1_completed, b1, fourth)
    b1.answer = h.server.output(b1.invocation)
    s.post_retry_s = time.monotonic() - started
    s.phase = "done"


@pytest.fixture(scope="module")
def scenario(lab_target, services, sink, tmp_path_factory) -> Scenario:
    services.course_llm.wait_ready(timeout=HANG_S)
    sink.wait_ready(timeout=HANG_S)
    workdir = tmp_path_factory.mktemp("lab07-run")
    server = restate.RestateServer(workdir / "restate").start()
    token = f"lab-07-{uuid.uuid4().hex[:8]}"
    found = Scenario(asks=make_asks(), token=token, server=server)
    harness = Lab07Harness(lab_target, services.course_llm, sink, server, workdir, token)
    try:
        run_scenario(harness, found)
    except CheckFailed as failure:
        found.failure = failure
    except restate.ServiceError as err:  # an answer restate-server gives only when a handler misbehaves
        found.failure = CheckFailed(f"restate-server refused a step of the scenario ({found.phase})",
                                    observed=str(err)[:600], expected="every ask and history call answered",
                                    revisit="Run the service by hand (README) and call it with client.py.",
                                    details=tail(harness.processes[-1].output()) if harness.processes else "")
    finally:
        with contextlib.suppress(Exception):
            sink.release()
        found.services = list(harness.processes)
        with contextlib.suppress(Exception):
            found.ledger = harness.ledger()
            found.attempts = sink.attempts(caller=token)
            found.deliveries = sink.deliveries(caller=token)
            for ask in found.asks.values():
                if ask.invocation:
                    found.journals[ask.name] = server.journal(ask.invocation)
            found.states = server.state(SERVICE)
        for service in harness.processes:
            service.stop()
        server.stop()
    return found


# --- the checks ----------------------------------------------------------------------------------

def conversation_text(messages: Any) -> str:
    return json.dumps(messages) if messages is not None else ""


@pytest.mark.check("crash-resume")
def test_killed_ask_completes_on_a_new_service(scenario: Scenario, evidence):
    """Given A1's ask SIGKILLed during its second model call, after its first call and its post,
    When a new service starts on another host and restate-server retries the invocation,
    Then the ask completes with the model's scripted final reply, served by the new process."""
    scenario.requires("crash-resume", "crash")
    a1 = scenario.asks["A1"]
    evidence.update(killed_pid=scenario.killed_pid, journal_entries_at_kill=len(scenario.journal_at_kill))
    if a1.answer != a1.reply:
        raise CheckFailed("A1's ask did not return the model's final reply after the crash",
                          observed=f"answer: {a1.answer!r}", expected=f"the scripted reply: {a1.reply!r}",
                          revisit="ask returns the content of the model's last message (the turn with no tool calls).")


@pytest.mark.check("llm-journaled")
def test_finished_model_calls_are_not_repeated(scenario: Scenario, evidence):
    """Given A1's first model call finished (journaled) before the kill, and its second was in flight,
    Then the ledger shows the first call exactly once, made by the killed process, and the second
    once in each process (the interrupted attempt, then the retry), all from the service's program."""
    scenario.requires("llm-journaled", "crash")
    a1 = scenario.asks["A1"]
    calls = scenario.entries(a1)
    first_turn = [e for e in calls if e.turn == 0]
    second_turn = [e for e in calls if e.turn == 1]
    origins = {(e.origin or {}).get("pid") for e in calls}
    evidence.update(first_call=len(first_turn), second_call=len(second_turn))
    pids = {p.pid for p in scenario.services}
    if not origins <= pids:
        raise CheckFailed("A model call for A1 came from a process other than the service",
                          observed=f"pids {sorted(map(str, origins))}", expected=f"the services' pids {sorted(pids)}",
                          revisit="Only the service calls the model, from inside ask.")
    if len(first_turn) != 1:
        raise CheckFailed(
            "The model call that had finished before the crash was made again after the restart",
            observed=f"{len(first_turn)} requests for A1's first model turn (pids "
                     f"{[(e.origin or {}).get('pid') for e in first_turn]}; the killed service was {scenario.killed_pid})",
            expected="1: the retry replays its result from Restate's journal", revisit=REVISIT_JOURNAL)
    if len(second_turn) != 2:
        raise CheckFailed("A1's second model call was not made once per attempt of the ask",
                          observed=f"{len(second_turn)} requests for the second turn",
                          expected="2: the one the kill interrupted and the retry's",
                          revisit=REVISIT_JOURNAL)


@pytest.mark.check("tool-journaled")
def test_the_post_is_delivered_once(scenario: Scenario, evidence):
    """Given A1's post to the team chat finished (journaled) before the kill,
    Then the sink recorded one attempt and one delivery for it, with the model's channel and text;
    And given B1's post received by the chat, its answer held, when the service was SIGKILLed,
    Then the retry on a new service posted it again with the same Idempotency-Key, and the chat
    delivered it once."""
    scenario.requires("tool-journaled", "crash")
    a1 = scenario.asks["A1"]
    attempts = [a for a in scenario.attempts if a.channel == a1.post["channel"]]
    deliveries = [d for d in scenario.deliveries if d.channel == a1.post["channel"]]
    evidence.update(attempts=len(attempts), deliveries=len(deliveries))
    if len(attempts) > 1:
        raise CheckFailed(
            "The post to the team chat ran again after the restart",
            observed=f"{len(attempts)} posts to {a1.post['channel']} ({len(deliveries)} delivered: "
                     f"{'the idempotency key' if len(deliveries) == 1 else 'nothing'} stopped the duplicate)",
            expected="1: the tool call's result is in the journal, so the retry does not post again",
            revisit=REVISIT_JOURNAL)
    if len(deliveries) != 1 or deliveries[0].text != a1.post["text"]:
        raise CheckFailed("The team chat did not get the post the model asked for",
                          observed=f"deliveries: {[(d.channel, d.text) for d in deliveries]}",
                          expected=f"one post to {a1.post['channel']}: {a1.post['text']!r}",
                          revisit="Run each tool call the model's message holds (tools.run_tool).")
    scenario.requires("tool-journaled", "post-retry")
    b1 = scenario.asks["B1"]
    posts = [a for a in scenario.attempts if a.channel == b1.post["channel"]]
    delivered = [d for d in scenario.deliveries if d.channel == b1.post["channel"]]
    keys = list(dict.fromkeys(a.key for a in posts))
    evidence.update(retried_post_attempts=len(posts), retried_post_keys=len(keys), retried_post_deliveries=len(delivered),
                    second_crash=f"{scenario.post_retry_s:.1f}s")
    if len(delivered) != 1 or len(keys) != 1:
        first_turn = [e for e in scenario.entries(b1) if e.turn == 0]
        if len(first_turn) > 1:  # the model was asked again, and its new call id made a new key
            raise CheckFailed(
                "After the crash during B1's post, the model call before it was made again, and the post went "
                "out twice",
                observed=f"{len(first_turn)} requests for B1's first model turn; {len(posts)} posts to "
                         f"{b1.post['channel']} under {len(keys)} key(s), {len(delivered)} delivered",
                expected="the model call replayed from the journal, so the retried post carries the same key",
                revisit=REVISIT_JOURNAL)
        raise CheckFailed(
            "B1's post, retried after the crash, went out under a new Idempotency-Key: the team chat delivered "
            f"it {len(delivered)} times" if len(keys) > 1 else "The team chat did not get B1's post exactly once",
            observed=f"{len(posts)} posts to {b1.post['channel']} (the one the kill interrupted, then the retry's), "
                     f"keys {keys}, {len(delivered)} delivered",
            expected="the retry posts again (the step never finished) with the interrupted post's key, and the chat "
                     "delivers it once", revisit=REVISIT_KEY)
    if len(posts) < 2:  # one post: the kill did not interrupt it, so the retry's key was never put to the test
        raise CheckFailed(
            "The second crash did not catch B1's post in flight: the post was not sent again after the restart",
            observed=f"{len(posts)} post(s) to {b1.post['channel']}, {len(delivered)} delivered",
            expected="the post the chat held when the service was killed, then the retry's post with the same key",
            revisit="Post inside the ask handler, in its own ctx.run step, so a crash before the post's result is "
                    "journaled makes the retry post again.")


@pytest.mark.check("journal-confirms")
def test_restate_journal_and_state_confirm_the_run(scenario: Scenario, evidence):
    """Given A1's invocation, When restate-server's admin SQL API is asked (sys_journal, state),
    Then the journal holds three completed ctx.run steps (model, post, model) and the stored
    conversation of session A holds A1's question, the post's result and the final reply."""
    scenario.requires("journal-confirms", "crash")
    a1 = scenario.asks["A1"]
    journal = scenario.journals.get("A1", [])
    runs = run_steps(journal)
    evidence.update(journal_runs=runs)
    if len(runs) != 3 or len(set(runs)) != 3:
        raise CheckFailed("Restate's journal of A1 does not show the three steps as ctx.run entries",
                          observed=f"Run entries: {runs}", expected="3 distinct names: model, tool, model",
                          revisit=REVISIT_JOURNAL)
    stored = scenario.state_after_a1
    if not stored:
        raise CheckFailed(f"Restate stores no state for session {a1.session} after A1's ask",
                          observed=f"SELECT ... FROM state: nothing for {SERVICE}/{a1.session}",
                          expected="the conversation, stored with ctx.set (a variable of the process is gone "
                                   "when the process is)", revisit=REVISIT_STATE)
    missing = conversation_lacks(stored, a1.marker, a1.reply)
    if missing:
        raise CheckFailed(f"Session {a1.session}'s stored state lacks {', '.join(missing)}",
                          observed=f"state: {conversation_text(stored)[:600]}",
                          expected="the conversation: question, tool call, tool result, reply",
                          revisit=REVISIT_STATE)


@pytest.mark.check("conversation-in-state")
def test_the_session_remembers_across_restarts(scenario: Scenario, evidence):
    """Given session A asked three times, the service restarted on another host before A3,
    Then A3's model request carries A1's and A2's questions and replies, and the stored
    conversation holds all three questions in order."""
    scenario.requires("conversation-in-state", "restart")
    a1, a2, a3 = (scenario.asks[n] for n in ("A1", "A2", "A3"))
    stored = conversation_text(scenario.states.get(a1.session) or None)
    sent = [e for e in scenario.entries(a3)]
    request = conversation_text(sent[0].request.get("messages")) if sent else ""
    evidence.update(stored_questions=sum(q.marker in stored for q in (a1, a2, a3)))
    if not stored:
        raise CheckFailed("Restate stores no conversation for the session",
                          observed=f"state of {SERVICE}/{a1.session}: nothing",
                          expected="the conversation under a state key", revisit=REVISIT_STATE)
    if a3.marker in stored and a1.marker not in stored:
        raise CheckFailed("The stored conversation holds only the latest question: each ask started from an empty list",
                          observed=f"state: {stored[:500]}", expected="A1, A2 and A3 in order",
                          revisit=REVISIT_STATE)
    if a1.marker in stored and a2.marker in stored and (a1.reply not in stored or a2.reply not in stored):
        raise CheckFailed("The stored conversation holds the questions but not the model's replies",
                          observed=f"state: {stored[:600]}",
                          expected="each question followed by the tool call, its result and the reply",
                          revisit=REVISIT_STATE + " ctx.set stores the value as it is at that moment: call it "
                                  "after the loop, once every message is appended.")
    if a1.marker not in request or a2.marker not in request or a2.reply not in request:
        raise CheckFailed("After the restart the session forgot its earlier questions",
                          observed=f"A3's model request: {request[:600]}",
                          expected="A1's and A2's questions and replies before A3",
                          revisit=REVISIT_STATE)
    positions = [stored.find(q.marker) for q in (a1, a2, a3)]
    if -1 in positions or positions != sorted(positions):
        raise CheckFailed("The stored conversation does not hold the three questions in order",
                          observed=f"state: {stored[:600]}", expected="A1, A2, A3", revisit=REVISIT_STATE)


@pytest.mark.check("single-writer")
def test_one_session_runs_one_ask_at_a_time(scenario: Scenario, evidence):
    """Given C1's post held by the sink while C2 (same session) and D1 (another session) were asked,
    Then D1 completed while C1 was held (sessions run side by side), C2 made no model call until C1
    had finished (Restate queued it), and C2's first model call came after C1's last."""
    scenario.requires("single-writer", "single-writer")
    c1, c2 = scenario.asks["C1"], scenario.asks["C2"]
    held = scenario.statuses_while_held
    evidence.update(c2_while_c1_held=held.get("C2"))
    c1_calls, c2_calls = scenario.entries(c1), scenario.entries(c2)
    if held.get("C2 model calls") not in ("0", None) or (c1_calls and c2_calls and min(e.at for e in c2_calls) < max(e.at for e in c1_calls)):
        raise CheckFailed("Two asks to one session ran at the same time",
                          observed=f"C2's model calls while C1 was held: {held.get('C2 model calls')}",
                          expected="0: an exclusive handler of a virtual object runs one at a time per key",
                          revisit="Keep ask an exclusive handler (@chat_session.handler() with an ObjectContext).")
    if c2.answer != c2.reply:
        raise CheckFailed("C2 did not get its reply after C1 finished", observed=repr(c2.answer), expected=repr(c2.reply),
                          revisit=REVISIT_STATE)


@pytest.mark.check("history-shared")
def test_history_reads_while_an_ask_runs(scenario: Scenario, evidence):
    """Given C1 held mid-ask, When C's history was asked for,
    Then it answered without waiting for C1 (a shared handler) with the state stored so far,
    And A's history returns exactly the conversation Restate stores."""
    scenario.requires("history-shared", "single-writer")
    held = scenario.statuses_while_held
    evidence.update(history_while_held=held.get("history"))
    if held.get("history") != "completed":
        raise CheckFailed("history waited for the running ask",
                          observed=f"restate-server's status of the history call while C1 ran: {held.get('history')}",
                          expected="completed: a shared handler runs beside an exclusive one", revisit=REVISIT_SHARED)
    held_state = scenario.state_c_while_held
    stored_then = (next(iter(held_state.values())) if len(held_state) == 1 else held_state) or []
    if scenario.history_while_held != stored_then:
        raise CheckFailed("history answered with a conversation that was not stored yet",
                          observed=f"history: {conversation_text(scenario.history_while_held)[:400]}",
                          expected=f"what Restate stored for the session at that moment: "
                                   f"{conversation_text(stored_then)[:300]}", revisit=REVISIT_STATE)
    scenario.requires("history-shared", "restart")
    stored = scenario.states.get(scenario.asks["A1"].session, {})
    stored_conversation = next(iter(stored.values()), None) if len(stored) == 1 else stored
    if scenario.history_a != stored_conversation:
        raise CheckFailed("A's history is not the conversation Restate stores",
                          observed=f"history: {conversation_text(scenario.history_a)[:300]}",
                          expected=f"state: {conversation_text(stored_conversation)[:300]}", revisit=REVISIT_STATE)
