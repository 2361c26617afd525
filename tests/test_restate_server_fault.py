"""A server fault: restate-server itself is SIGKILLed mid-invocation and started again.

What the server had stored (the journal up to the last acknowledged ctx.run) is on disk in its
state dir; the restarted server resumes the invocation and calls the service again. The model call
that finished before the crash is not made again; the post that was in flight runs again with the
same idempotency key, so the team chat delivers it once.
"""

from __future__ import annotations

import sys
import time
import uuid

import pytest

from labkit import course, proc, restate
from labkit.pytest_plugin import graded_copy
from labkit.services import CourseLLM
from labkit.sink import NotificationSink
from procs import running, wait_until

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(restate.unavailable() is not None, reason=str(restate.unavailable()))]
LAB = course.load().lab("07")
HANG_S = 240.0


def test_restate_server_killed_mid_invocation_finishes_it_after_a_restart(tmp_path):
    """Given Lab 07's solution served and registered, and an ask whose post the sink holds
        (the first model call is journaled, the post recorded, its result not yet sent back),
    When restate-server is SIGKILLed, the post released, and the server started again on the same
        ports and state dir,
    Then the invocation completes with the scripted reply, the first model call was made once,
        the second once, and the post was delivered once (its retry carried the same key)."""
    target = graded_copy(LAB, LAB.solution_dir, tmp_path / "graded")
    llm = CourseLLM(tmp_path / "llm", rules_files=[course.COURSE_TOML]).launch()
    sink = NotificationSink(tmp_path / "sink").launch()
    server = restate.RestateServer(tmp_path / "restate").start()
    service = None
    try:
        llm.wait_ready(HANG_S)
        sink.wait_ready(HANG_S)
        token, marker = f"lab-fault-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
        reply = f"All sorted ({marker})."
        llm.push_rules([{"name": f"fault-{marker}", "match": rf"\[lab07 chat\] .*{marker}", "turns": [
            {"tool": "post_message", "arguments": {"channel": "#support", "text": f"help {marker}"}},
            {"reply": reply}]}])
        sock = restate.listening_socket()
        port = sock.getsockname()[1]
        env = target.python_env(OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY=token, LAB07_NOTIFY_URL=sink.messages_url,
                                LAB07_NOTIFY_TOKEN=token, LAB07_BIND=f"fd://{sock.fileno()}", LAB07_TOOL_TIMEOUT_S="600")
        try:
            service = proc.start([sys.executable, "-m", target.module("service")], name="lab07-service",
                                 log_path=tmp_path / "service.log", env=env, cwd=tmp_path, student=True,
                                 pass_fds=[sock.fileno()])
        finally:
            sock.close()
        assert wait_until(lambda: _register(server, port), timeout=HANG_S), service.output()

        hold = sink.hold(caller=token, times=1, release_after_s=600)
        invocation = server.send("ChatSession", f"s-{marker}", "ask", f"question {marker}")
        assert wait_until(lambda: any(a.held for a in sink.attempts(caller=token)), timeout=HANG_S)
        server_pid = server.pid
        server.kill()
        assert not running(server_pid)
        sink.release(hold)
        server.restart()
        answer = server.output(invocation, timeout=HANG_S)
        assert answer == reply
        calls = [e for e in llm.ledger().entries(caller=token) if marker in e.prompt]
        assert [e.turn for e in calls] == [0, 1], [(e.turn, e.status) for e in calls]
        assert len(sink.deliveries(caller=token)) == 1
        attempts = sink.attempts(caller=token)
        assert len({a.key for a in attempts}) == 1, attempts  # a retried post carries the same key
        assert service.alive, "the service survived the server's crash"
    finally:
        if service is not None:
            service.stop()
        server.stop()
        sink.stop()
        llm.stop()
    assert not running(server.pid)


def _register(server, port):
    try:
        return server.register(f"http://127.0.0.1:{port}")
    except restate.ServiceError:
        time.sleep(0.1)
        return None
