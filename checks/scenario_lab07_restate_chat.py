"""Lab 07 crash sweep: chat sessions (Restate virtual objects) survive their service SIGKILLed at random moments.

Per trial: a fresh LLM key and sink token; `subjects` sessions, each asked one question whose
script is model -> post_message -> model (a rule per session, answered `latency_ms` late; the sink
answers each post `send_latency_s` late, recording it on arrival), sent to restate-server
`start_gap_s` apart. One service process serves every session (one host); a kill SIGKILLs it, and
the restart starts a new one on the same port as on another host (fresh cwd, TMPDIR, HOME):
restate-server retries the invocations there; once the new service serves, the sweep resumes the
backing-off ones at once (admin API), so a kill lands on running steps rather than on a backoff.
restate-server itself is never killed here (tests/test_restate_server_fault.py does that).

Two ledgers, one rule (labkit.sweep):
- model turns: turn N of session S = the course LLM's entries under the trial's key whose prompt
  carries S's marker and that the script answered as turn N; recorded = S's journal holds the
  result of its (N+1)-th ctx.run model step; successor = the post (turn 0) or none (turn 1).
- posts: S's post = the sink's attempts carrying S's marker; recorded = the journal holds the
  tool step's result; successor = turn 1. A repeat caught in flight is the at-least-once window
  (same Idempotency-Key: the sink suppresses the second delivery).
Invariants verified at the end: every ask completed with its script's reply; one delivery per
session; the stored conversation holds the question, the post's result and the reply; no LLM call
from a process other than the services.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from labkit import course, proc, restate
from labkit.services import CourseLLM
from labkit.sink import NotificationSink
from labkit.sweep import LogicalCall, Violation
from labkit.sweep_kit import graded_copy

SERVICE = "ChatSession"


# --- what the check and the sweep share ------------------------------------------------------------

def script_rule(name: str, marker: str, reply: str, post: dict[str, str] | None = None,
                latency_ms: int = 0) -> dict:
    """The course LLM's script for a question carrying `marker`: model -> post_message -> model
    (or a plain reply when there is no post), each turn answered `latency_ms` late."""
    rule: dict = {"name": name, "match": rf"\[lab07 chat\] .*{marker}"}
    if post:
        rule["turns"] = [{"tool": "post_message", "arguments": post}, {"reply": reply}]
    else:
        rule["reply"] = reply
    if latency_ms:
        rule["latency_ms"] = latency_ms
    return rule


def start_service(target, llm, sink, token: str, port: int, host: Path, log_path: Path,
                  tool_timeout_s: float) -> proc.ManagedProcess:
    """The student's service as a real process on a host of its own (fresh cwd, TMPDIR, HOME), on
    `port`, bound by the course and handed over (the service may not bind: Landlock), under
    labkit.attribution (student=True) so each ledger entry names its pid."""
    for sub in ("tmp", "home"):
        (host / sub).mkdir(parents=True, exist_ok=True)
    sock = restate.listening_socket(port)
    try:
        env = target.python_env(
            OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY=token, LAB07_NOTIFY_URL=sink.messages_url,
            LAB07_NOTIFY_TOKEN=token, LAB07_BIND=f"fd://{sock.fileno()}", LAB07_TOOL_TIMEOUT_S=str(tool_timeout_s),
            TMPDIR=str(host / "tmp"), HOME=str(host / "home"))
        return proc.start([sys.executable, "-m", target.module("service")], name="lab07-service",
                          log_path=log_path, env=env, cwd=host, student=True, pass_fds=[sock.fileno()])
    finally:
        sock.close()  # the service holds its own copy: a dead service's port must refuse, not queue


def conversation_lacks(stored, marker: str, reply: str) -> list[str]:
    """What a session's stored conversation should hold after an ask that posted and is missing:
    the question (its marker), the post's result (the tool's "posted to ..."), the final reply."""
    text = json.dumps(stored) if stored is not None else ""
    return [what for what, piece in (("the question", marker), ("the final reply", reply),
                                     ("the post's result", "posted to")) if piece not in text]


def run_steps(journal: list[dict]) -> list[str | None]:
    """The names of an invocation's ctx.run steps, in journal order (sys_journal's "Command: Run")."""
    return [entry.get("name") for entry in journal if entry["entry_type"] == "Command: Run"]


class Sweep:
    lab = "07"

    def __init__(self, workdir: Path, subjects: int = 4, path: Path | None = None, latency_ms: int = 300,
                 send_latency_s: float = 0.3, start_gap_s: float = 0.4, kill_window: tuple[float, float] = (0.3, 2.0),
                 finish_timeout_s: float = 120.0):
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.send_latency_s = latency_ms, send_latency_s
        self.start_gap_s, self.kill_window, self.finish_timeout_s = start_gap_s, kill_window, finish_timeout_s
        self.run_id = uuid.uuid4().hex[:6]
        self.services: list[proc.ManagedProcess] = []

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        self.target = graded_copy(self.lab, self.workdir, self.path)
        state = self.workdir / "services"
        self.llm = CourseLLM(state / "llm", rules_files=[course.COURSE_TOML]).launch()
        self.sink = NotificationSink(state / "sink").launch()
        self.server = restate.RestateServer(state / "restate").launch()
        await asyncio.to_thread(self.server.wait_ready)
        await asyncio.to_thread(self.llm.wait_ready)
        await asyncio.to_thread(self.sink.wait_ready)
        self.port = restate.free_port()
        self.token = ""

    async def stop(self) -> None:
        for service in self.services:
            service.stop()
        for server in filter(None, (getattr(self, "server", None), getattr(self, "sink", None),
                                    getattr(self, "llm", None))):
            server.stop()

    def _start_service(self) -> proc.ManagedProcess:
        n = len(self.services) + 1
        service = start_service(self.target, self.llm, self.sink, self.token, self.port, self.trial_dir / f"host{n}",
                                self.trial_dir / f"service{n}.log", tool_timeout_s=120)
        self.services.append(service)
        return service

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        key = f"{self.run_id}-t{trial}"
        self.trial_dir = self.workdir / f"trial{trial}"
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.token = f"lab-sweep07-{key}"
        self.markers = {f"s{i}-{key}": uuid.uuid4().hex[:8] for i in range(self.subjects)}  # session: marker
        self.replies = {session: f"Handled ({marker})." for session, marker in self.markers.items()}
        self.llm.push_rules([script_rule(f"sweep07-{marker}", marker, self.replies[session],
                                         {"channel": "#support", "text": f"help {marker}"}, self.latency_ms)
                             for session, marker in self.markers.items()])
        self.sink.hold(caller=self.token, times=10_000, release_after_s=self.send_latency_s)
        for service in self.services:
            service.stop()
        self.services = []
        self._start_service()
        await asyncio.to_thread(self._register)
        self.invocations: dict[str, str] = {}
        self.gate = gate
        self.feed = asyncio.create_task(self._ask())

    def _register(self) -> None:
        deadline = time.monotonic() + 300
        while True:
            try:
                self.server.register(f"http://127.0.0.1:{self.port}")
                return
            except restate.ServiceError:
                if not self.services[-1].alive or time.monotonic() > deadline:
                    raise RuntimeError("the Lab 07 service did not start:\n" + self.services[-1].output()[-2000:])
                time.sleep(0.1)

    async def _ask(self) -> None:
        for n, (session, marker) in enumerate(self.markers.items()):
            if n:
                await asyncio.sleep(self.start_gap_s)
            await self.gate.wait()
            self.invocations[session] = await asyncio.to_thread(
                self.server.send, SERVICE, session, "ask", f"Where is my order? ref {marker}")

    async def wait_ready(self) -> None:
        """Until the newest service serves (hypercorn's "Running on" line: the app is imported and
        the socket accepted from), so each kill lands on a working service, not on one starting."""
        service = self.services[-1]
        deadline = time.monotonic() + 300
        while service.alive and "Running on" not in service.output() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # restate-server retries a failed invocation after a backoff (up to 2 s here): a kill in that
        # window finds nothing running. Resume them now, as an operator would after a restart.
        for invocation in self.invocations.values():
            if (self.server.invocation(invocation) or {}).get("status") == "backing-off":
                await asyncio.to_thread(self.server.resume, invocation)

    def processes(self) -> list:
        return self.services[-1:]

    def _runs_done(self) -> dict[str, list[str]]:
        """Each session's ctx.run steps whose result restate-server holds, in order."""
        rows = self.server.query("SELECT id, index, entry_type, name FROM sys_journal ORDER BY id, index")
        found: dict[str, list[str]] = {}
        for session, invocation in self.invocations.items():
            entries = [r for r in rows if r["id"] == invocation]
            runs = run_steps(entries)
            done = sum(r["entry_type"] == "Notification: Run" for r in entries)
            found[session] = runs[:done]  # the loop awaits each step before the next: results in order
        return found

    def _recorded(self) -> set[str]:
        found = set()
        for session, runs in self._runs_done().items():
            models = [r for r in runs if r and r.startswith("llm")]
            found.update(f"{session}/turn{n}" for n in range(len(models)))
            if any(r and r.startswith("tool") for r in runs):
                found.add(f"sink:{session}/post")
        return found

    async def landings(self) -> list[str]:
        done = self._runs_done()
        found = []
        for session in self.markers:
            if session not in self.invocations:
                found.append("ask not sent yet")
                continue
            runs = done.get(session, [])
            status = (self.server.invocation(self.invocations[session]) or {}).get("status", "?")
            found.append(f"{status}, {len(runs)} step(s) journaled" + (f" (last: {runs[-1]})" if runs else ""))
        return found

    async def after_kill(self) -> None:
        return None  # restate-server sees the stream break and retries with backoff by itself

    async def recorded(self) -> set[str]:
        return self._recorded()

    async def restart(self) -> None:
        self._start_service()

    async def finish(self) -> None:
        await asyncio.wait_for(self.feed, timeout=self.finish_timeout_s)
        deadline = time.monotonic() + self.finish_timeout_s
        while time.monotonic() < deadline:
            statuses = [(self.server.invocation(i) or {}).get("status") for i in self.invocations.values()]
            if all(s == "completed" for s in statuses):
                return
            await asyncio.sleep(0.1)

    def _entries(self):
        return self.llm.ledger().entries(caller=self.token)

    async def logical_calls(self) -> list[LogicalCall]:
        entries = self._entries()
        pids = {service.pid for service in self.services}
        self.strays = [e for e in entries if (e.origin or {}).get("pid") not in pids
                       or not any(m in e.prompt for m in self.markers.values())]
        calls = []
        for session, marker in self.markers.items():
            mine = [e for e in entries if marker in e.prompt]
            for turn in (0, 1):
                calls.append(LogicalCall(key=f"{session}/turn{turn}", subject=session,
                                         successor=f"sink:{session}/post" if turn == 0 else None,
                                         entries=[(e.at, e.status) for e in mine if e.turn == turn]))
        return calls

    async def ledgers(self) -> dict[str, tuple[str, list[LogicalCall]]]:
        attempts = self.sink.attempts(caller=self.token)
        posts = [LogicalCall(key=f"sink:{session}/post", subject=session, successor=f"{session}/turn1",
                             entries=[(a.at, 200) for a in attempts if marker in a.text])
                 for session, marker in self.markers.items()]
        return {"sink": ("post", posts)}

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        deliveries = self.sink.deliveries(caller=self.token)
        stored = self.server.state(SERVICE)
        for session, marker in self.markers.items():
            invocation = self.invocations.get(session)
            row = self.server.invocation(invocation) if invocation else None
            if not row or row.get("status") != "completed":
                found.append(Violation(trial, session, "ask lost", f"invocation {invocation}: {row}",
                                       "completed on a restarted service"))
                continue
            answer = await asyncio.to_thread(self.server.output, invocation)
            if answer != self.replies[session]:
                found.append(Violation(trial, session, "wrong answer", repr(answer), repr(self.replies[session])))
            mine = [d for d in deliveries if marker in d.text]
            if len(mine) != 1:
                found.append(Violation(trial, session, "not exactly one delivery", f"{len(mine)} deliveries",
                                       "1 (a retried post carries the same key)"))
            if conversation_lacks(stored.get(session, {}), marker, self.replies[session]):
                found.append(Violation(trial, session, "conversation not stored",
                                       json.dumps(stored.get(session, {}))[:200],
                                       "question, post result and reply in the object's state"))
        if self.strays:
            found.append(Violation(trial, "course LLM", "LLM calls from elsewhere",
                                   f"{len(self.strays)} request(s), e.g. from {self.strays[0].origin}",
                                   "every request from a service process, for a session's question"))
        return found

    async def end_trial(self) -> None:
        if not self.feed.done():
            self.feed.cancel()
        self.sink.release()
        for service in self.services:
            service.stop()
