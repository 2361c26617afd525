"""labkit.restate against the real restate-server: start, register, call, query, kill, stop.

Every test here needs the binary from npm (`make setup` runs `npm ci`); without it they are
skipped with the reason labkit.restate gives, and test_restate_unavailable.py proves that path.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import uuid

import psutil
import pytest

from labkit import limits, proc, restate
from procs import running, wait_until

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(restate.unavailable() is not None, reason=str(restate.unavailable()))]

TINY_SERVICE = '''
"""A virtual object with one journaled step and one state key, served from an inherited socket."""
import asyncio, os

import restate
from hypercorn.asyncio import serve
from hypercorn.config import Config

tally = restate.VirtualObject("Tally")


@tally.handler()
async def add(ctx: restate.ObjectContext, amount: int) -> dict:
    total = (await ctx.get("total", type_hint=int)) or 0
    served_by = await ctx.run_typed("whoami", os.getpid)
    ctx.set("total", total + amount)
    return {"total": total + amount, "served_by": served_by}


@tally.handler(kind="shared")
async def peek(ctx: restate.ObjectSharedContext) -> int:
    return (await ctx.get("total", type_hint=int)) or 0


if __name__ == "__main__":
    config = Config()
    config.bind = [os.environ["TINY_BIND"]]
    asyncio.run(serve(restate.app(services=[tally]), config))
'''


@pytest.fixture
def server(tmp_path):
    started = restate.RestateServer(tmp_path / "restate").start()
    yield started
    started.stop()


def start_tiny(tmp_path, port: int = 0) -> tuple[proc.ManagedProcess, int]:
    """The tiny service as a confined student process, listening on a socket the test bound."""
    (tmp_path / "tinysvc.py").write_text(textwrap.dedent(TINY_SERVICE))
    sock = restate.listening_socket(port)
    try:
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "TINY_BIND": f"fd://{sock.fileno()}"}
        service = proc.start([sys.executable, "-m", "tinysvc"], name="tiny", log_path=tmp_path / "tiny.log",
                             env=env, cwd=tmp_path, student=True, pass_fds=[sock.fileno()])
        return service, sock.getsockname()[1]
    finally:
        sock.close()  # the service holds its own copy; ours would keep accepting for a dead service


def test_restate_server_runs_a_registered_service_and_answers_sql(server, tmp_path):
    """Given a real restate-server on free 127.0.0.1 ports with its state in a temp dir,
    And a tiny virtual object served by hypercorn from a socket the kit bound (the service is a
        confined process that may not bind a port itself),
    When the deployment is registered through the admin API and the object is called twice,
    Then the calls answer through the ingress, sys_invocation shows both completed with a
        journal, sys_journal holds the ctx.run entry, the state table holds the total,
    And stopping everything leaves no process behind."""
    limits.allow_writes_under(tmp_path)
    try:
        service, port = start_tiny(tmp_path)
    finally:
        limits.allow_writes_anywhere()
    try:
        conns = psutil.Process(server.pid).net_connections("all")
        listening = [(c.laddr.ip, c.laddr.port) for c in conns if c.family != socket.AF_UNIX and c.laddr and (
            c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM)]
        assert {p for _, p in listening} >= {server.admin_port, server.ingress_port, server.node_port}, listening
        assert all(ip == "127.0.0.1" for ip, _ in listening), \
            f"observed {listening}; expected every TCP listener and UDP socket of restate-server on 127.0.0.1"
        deployment = wait_until(lambda: _try_register(server, port), timeout=60)
        assert deployment and [s["name"] for s in deployment["services"]] == ["Tally"], deployment
        key = f"k-{uuid.uuid4().hex[:6]}"
        assert server.call("Tally", key, "add", 5)["total"] == 5
        second = server.call("Tally", key, "add", 2)
        assert second == {"total": 7, "served_by": service.pid}, second
        assert server.call("Tally", key, "peek") == 7

        adds = server.invocations(f"Tally/{key}/add")
        assert [row["status"] for row in adds] == ["completed", "completed"], adds
        journal = server.journal(adds[0]["id"])
        runs = [entry for entry in journal if entry["entry_type"] == "Command: Run"]
        assert [entry["name"] for entry in runs] == ["whoami"], journal
        assert server.state("Tally", key) == {key: {"total": 7}}
    finally:
        service.stop()
    server.stop()
    assert not running(server.pid) and not running(service.pid)


def _try_register(server, port):
    try:
        return server.register(f"http://127.0.0.1:{port}")
    except restate.ServiceError:
        return None


def test_a_killed_service_is_retried_by_the_server_and_its_journal_replayed(server, tmp_path):
    """Given the tiny service registered, and an invocation that completed its ctx.run,
    When the service is SIGKILLed (hypercorn serves in-process: no worker child survives it) and
        started again on the same port, as a new process,
    Then the port is free after the kill (nothing of the old service is left),
    And the next call is served by the new process, with the state the server kept."""
    service, port = start_tiny(tmp_path)
    assert wait_until(lambda: _try_register(server, port), timeout=60)
    key = f"k-{uuid.uuid4().hex[:6]}"
    assert server.call("Tally", key, "add", 3)["served_by"] == service.pid
    tree = [p.pid for p in service.tree()]
    assert tree == [service.pid], f"observed processes {tree}; expected hypercorn to serve in one process"
    service.kill()
    assert service.killed_with == signal.SIGKILL and not running(service.pid)
    assert not any(c.laddr.port == port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
    again, _ = start_tiny(tmp_path, port)
    try:
        answer = server.call("Tally", key, "add", 4)
        assert answer == {"total": 7, "served_by": again.pid}, answer
    finally:
        again.stop()


def test_stop_pid_stops_a_detached_server(tmp_path):
    """Given a detached restate-server (as `lab up` starts it), When stop_pid(pid), Then it exits."""
    detached = restate.RestateServer(tmp_path / "restate", detached=True).start()
    pid = detached.pid
    try:
        restate.stop_pid(pid)
        assert wait_until(lambda: not running(pid), timeout=30)
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
        detached.process.wait(5)
