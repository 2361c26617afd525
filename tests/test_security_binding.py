"""Every server the course starts binds 127.0.0.1 only: no socket of theirs is reachable from outside.

Each server is started as the course starts it (the kit's classes), on free ports in temp dirs,
all at once; then every socket of every process in its tree is read with psutil: TCP sockets in
LISTEN, UDP sockets (bound, no state) and unix sockets. Allowed: 127.0.0.1 and unix sockets.
Not allowed: 0.0.0.0, ::, a LAN address, or ::1 (the course promises 127.0.0.1).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import psutil
import pytest

from labkit import course, postgres
from labkit.services import CourseLLM, TemporalServer
from labkit.sink import NotificationSink
from labkit.web import CourseWeb

pytestmark = pytest.mark.timeout(90)


def sockets_of(server) -> list[tuple[str, str, int | None]]:
    """(family/type, address, port) of every listening or bound socket in the server's process tree."""
    found = []
    for process in server.process.tree():
        try:
            connections = process.net_connections(kind="all")
        except psutil.Error:  # a helper process that came and went
            continue
        for conn in connections:
            if conn.family == socket.AF_UNIX:
                found.append(("unix", conn.laddr or "(unnamed)", None))
            elif conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN:
                found.append(("tcp", conn.laddr.ip, conn.laddr.port))
            elif conn.type == socket.SOCK_DGRAM and conn.laddr:
                found.append(("udp", conn.laddr.ip, conn.laddr.port))
    return found


def test_every_course_server_listens_on_127_0_0_1_only(tmp_path):
    """Given the Temporal dev server (with its Web UI and a db file, as `lab up` runs it), the course
      LLM, the course web, the notification sink and PostgreSQL in TCP mode with kept data (as
      `lab up` runs it on 5433, here on a free port),
    When all of them are up,
    Then each listens on its own port, and every TCP, UDP or unix socket of each is on 127.0.0.1
      or a unix socket."""
    servers = {
        "temporal": TemporalServer(tmp_path / "temporal", db_file=tmp_path / "temporal" / "temporal.db"),
        "course LLM": CourseLLM(tmp_path / "llm", rules_files=[course.COURSE_TOML]),
        "course web": CourseWeb(tmp_path / "web"),
        "notification sink": NotificationSink(tmp_path / "sink"),
        # Kept data outside pytest's temp dirs: as root the server runs as another user, and pytest
        # resets its root temp dir to 0700 whenever a session starts (another test run, say).
        "postgres": postgres.PostgresServer(Path(tempfile.mkdtemp(prefix="lab-pg-kept-")), keep=True),
    }
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait_ready()
        seen = {name: sockets_of(server) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(servers["postgres"].state_dir, ignore_errors=True)

    expected_ports = {"temporal": {servers["temporal"].port, servers["temporal"].ui_port},
                      **{name: {servers[name].port} for name in servers if name != "temporal"}}
    for name, ports in expected_ports.items():
        tcp_ports = {port for kind, _, port in seen[name] if kind == "tcp"}
        assert ports <= tcp_ports, f"{name}: observed listening ports {sorted(tcp_ports)}; expected {sorted(ports)}"
    exposed = {name: [s for s in found if s[0] != "unix" and s[1] != "127.0.0.1"] for name, found in seen.items()}
    exposed = {name: found for name, found in exposed.items() if found}
    assert not exposed, f"observed sockets not on 127.0.0.1: {exposed}; expected 127.0.0.1 or unix sockets only"
    print("\n" + "\n".join(f"{name}: {sorted(set(found), key=str)}" for name, found in seen.items()))
