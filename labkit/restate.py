"""The real Restate server (npm `@restatedev/restate-server`) for checks, `lab up` and sweeps.

Restate is a separate process: it stores each invocation's journal and each virtual object's
state, and *calls* the service (an HTTP/2 endpoint that the Python SDK serves through hypercorn)
whenever an invocation has work to do. This module starts that server and talks to its APIs:

    server = RestateServer(tmp / "restate").start()     # free ports on 127.0.0.1, state in the dir
    server.register(f"http://127.0.0.1:{port}")         # admin API: POST /deployments
    server.call("ChatSession", "s1", "ask", "hello")     # ingress: POST /ChatSession/s1/ask
    server.query("SELECT id, status FROM sys_invocation")  # admin SQL: POST /query
    server.stop()

The binary is found in the project's node_modules (`make setup` runs `npm ci`), or where
LAB_RESTATE_SERVER points (a path; `LAB_RESTATE_SERVER=none` hides it, as on a machine without
Node.js). `unavailable()` says why the server cannot run, or None: a check reports NOT CHECKED
with that reason instead of failing.

A service the server calls must listen somewhere the server can reach, and student processes may
not bind TCP ports in a check session (labkit.limits): `listening_socket(port)` binds the port in
the course's process, and the service is handed the socket (hypercorn's ``--bind fd://N``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import proc
from .services import HOST, ServiceError, free_port, port_open

BINARY_ENV = "LAB_RESTATE_SERVER"
HIDDEN = ("none", "0", "off", "")
REPO = Path(__file__).resolve().parent.parent
NPM_PACKAGE = "@restatedev/restate-server"
INSTALL_HINT = ("install Node.js 20+ (https://nodejs.org, or your package manager) and run `make setup`, "
                "which runs `npm ci` and puts the Restate server in node_modules/")


class RestateUnavailable(ServiceError):
    """No restate-server binary on this machine; the message says what to install."""


def _npm_platform() -> str:
    """The suffix of the npm package that carries this machine's binary (linux-x64, darwin-arm64)."""
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{system}-{arch}"


def binary() -> Path:
    """The restate-server executable itself (not npm's node wrapper: its pid must be the server's)."""
    chosen = os.environ.get(BINARY_ENV)
    if chosen is not None:
        if chosen.strip().lower() in HIDDEN:
            raise RestateUnavailable(f"the Restate server is hidden ({BINARY_ENV}={chosen!r}); {INSTALL_HINT}")
        path = Path(chosen)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RestateUnavailable(f"{BINARY_ENV}={chosen} is not an executable restate-server; {INSTALL_HINT}")
        return path
    packaged = REPO / "node_modules" / "@restatedev" / f"restate-server-{_npm_platform()}" / "bin" / "restate-server"
    if packaged.is_file() and os.access(packaged, os.X_OK):
        return packaged
    found = shutil.which("restate-server")
    if found:  # npm's wrapper script on PATH would also work, but a Homebrew/cargo binary is the server
        return Path(found)
    npm = "npm is on PATH" if shutil.which("npm") else "Node.js/npm is not installed"
    raise RestateUnavailable(f"the Restate server ({NPM_PACKAGE}) is not installed ({npm}); {INSTALL_HINT}")


def unavailable() -> str | None:
    """Why the Restate server cannot run here, or None when it can."""
    try:
        binary()
    except RestateUnavailable as err:
        return str(err)
    return None


def version() -> str:
    import subprocess

    out = subprocess.run([str(binary()), "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout or out.stderr).strip()


def listening_socket(port: int = 0, host: str = HOST) -> socket.socket:
    """A TCP socket bound and listening on host:port (0: a free port), inheritable, for a service
    started with `pass_fds=[sock.fileno()]` and bind ``fd://<fileno>``. SO_REUSEADDR: the same port
    can be bound again right after the service that held it was killed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port or free_port()))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@dataclass
class RestateServer:
    """One restate-server process: ingress, admin and node ports on 127.0.0.1, state in state_dir.

    retry_max_interval: the cap of the server's invocation retry backoff (Restate's default is
    1 min; checks restart a killed service at once and want the retry soon after it answers)."""

    state_dir: Path
    ingress_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    node_port: int = field(default_factory=free_port)
    detached: bool = False
    retry_max_interval: str = "2s"
    process: proc.ManagedProcess | None = None

    @property
    def ingress_url(self) -> str:
        return f"http://{HOST}:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
        env.update({
            "RESTATE_ADMIN__BIND_ADDRESS": f"{HOST}:{self.admin_port}",
            "RESTATE_INGRESS__BIND_ADDRESS": f"{HOST}:{self.ingress_port}",
            "RESTATE_BIND_ADDRESS": f"{HOST}:{self.node_port}",
            "RESTATE_ADVERTISED_ADDRESS": f"http://{HOST}:{self.node_port}/",
            "RESTATE_LISTEN_MODE": "tcp",  # no unix sockets in the state dir (path length limits)
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_DEFAULT_NUM_PARTITIONS": "4",  # 24 by default: a laptop runs one invocation at a time here
            "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "256MB",  # 2 GiB by default
            "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": self.retry_max_interval,
            "RESTATE_LOG_FILTER": "warn,restate=warn",
        })
        return env

    def argv(self) -> list[str]:
        return [str(binary()), "--base-dir", str(self.state_dir / "data"), "--node-name", "lab",
                "--no-logo", "--log-disable-ansi-codes", "true"]

    def start(self, timeout: float = proc.START_HANG_S) -> RestateServer:
        return self.launch().wait_ready(timeout)

    def launch(self) -> RestateServer:
        """Spawn the server without waiting (from the main thread: see labkit.proc, PDEATHSIG)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv()  # raises RestateUnavailable without a binary
        try:
            self.process = proc.start(argv, name="restate-server", log_path=self.state_dir / "restate.log",
                                      env=self.env(), cwd=self.state_dir, detached=self.detached)
        except OSError as exc:
            raise ServiceError(f"cannot run the Restate server {argv[0]}: {exc.strerror or exc}") from exc
        return self

    def wait_ready(self, timeout: float = proc.START_HANG_S) -> RestateServer:
        """Until the admin API's /health and the ingress answer (each returns at once when up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive:
                output = self.process.output()[-2000:]
                self.process.stop()
                raise ServiceError(f"the Restate server exited at start:\n{output}")
            if port_open(self.admin_port) and port_open(self.ingress_port):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.admin_url}/health", timeout=2).status_code == 200 and \
                            httpx.get(f"{self.ingress_url}/restate/health", timeout=2).status_code == 200:
                        return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"the Restate server did not answer on {self.admin_url} within {timeout:.0f} s "
                           f"(log: {self.state_dir / 'restate.log'})")

    def stop(self) -> None:
        """SIGTERM (Restate flushes and exits), SIGKILL whatever is left."""
        if self.process is not None:
            self.process.stop(grace=10)

    def kill(self) -> None:
        """SIGKILL, as a crash of the server's host would: what it stored is on disk in state_dir."""
        if self.process is not None:
            self.process.kill()

    def restart(self, timeout: float = proc.START_HANG_S) -> RestateServer:
        """Start again on the same ports and state dir (after stop() or kill())."""
        if self.process is not None and self.process.alive:
            self.stop()
        return self.start(timeout)

    # --- admin API ---------------------------------------------------------------------------------

    def register(self, uri: str, *, force: bool = True, timeout: float = 30) -> dict[str, Any]:
        """Register the deployment at `uri` (Restate asks it which services it serves); its answer.
        force=True: the same URI serving changed code replaces the old registration."""
        response = httpx.post(f"{self.admin_url}/deployments", json={"uri": uri, "force": force},
                              timeout=timeout)
        if response.status_code not in (200, 201):
            raise ServiceError(f"Restate refused the deployment {uri} ({response.status_code}): "
                               f"{response.text[:1500]}")
        return response.json()

    def query(self, sql: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Rows of the admin SQL API (tables: sys_invocation, sys_journal, state, sys_service, ...)."""
        response = httpx.post(f"{self.admin_url}/query", json={"query": sql}, timeout=timeout,
                              headers={"accept": "application/json"})
        if response.status_code != 200:
            raise ServiceError(f"Restate's SQL API refused the query ({response.status_code}): {response.text[:500]}")
        return response.json().get("rows", [])

    def invocations(self, target_prefix: str = "") -> list[dict[str, Any]]:
        """sys_invocation rows whose target ("Service/key/handler") starts with the prefix, oldest first."""
        rows = self.query("SELECT id, target, target_service_key, target_handler_name, status, retry_count, "
                          "last_failure, last_failure_error_code, journal_size, created_at, modified_at "
                          "FROM sys_invocation ORDER BY created_at")
        return [row for row in rows if str(row.get("target", "")).startswith(target_prefix)]

    def invocation(self, invocation_id: str) -> dict[str, Any] | None:
        return next((row for row in self.invocations() if row["id"] == invocation_id), None)

    def journal(self, invocation_id: str) -> list[dict[str, Any]]:
        """The invocation's journal entries in order: index, entry_type ("Command: Run", ...), name,
        and entry_json (the decoded entry, parsed into a dict)."""
        # One fixed statement, filtered here: the SQL API takes no parameters, and no SQL is built
        # from a value (tests/test_security_sql.py).
        rows = [row for row in self.query("SELECT id, index, entry_type, name, entry_json, appended_at "
                                          "FROM sys_journal ORDER BY id, index")
                if row["id"] == invocation_id]
        for row in rows:
            row.setdefault("name", None)  # the SQL API leaves out NULL columns
            with contextlib.suppress(TypeError, ValueError):
                row["entry_json"] = json.loads(row.get("entry_json") or "null")
        return rows

    def state(self, service: str, key: str | None = None) -> dict[str, dict[str, Any]]:
        """A virtual object's stored state: {object key: {state key: value (JSON-decoded when it is JSON)}}."""
        rows = self.query("SELECT service_name, service_key, key, value_utf8 FROM state")
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["service_name"] != service or (key is not None and row["service_key"] != key):
                continue
            value: Any = row.get("value_utf8")
            with contextlib.suppress(TypeError, ValueError):
                value = json.loads(value)
            found.setdefault(row["service_key"], {})[row["key"]] = value
        return found

    def resume(self, invocation_id: str) -> None:
        """Retry a backing-off (or paused) invocation now instead of at its next backoff (admin
        PATCH /invocations/<id>/resume): what an operator does once the service answers again."""
        response = httpx.patch(f"{self.admin_url}/invocations/{invocation_id}/resume", timeout=30)
        if response.status_code not in (200, 202):
            raise ServiceError(f"Restate did not resume {invocation_id} ({response.status_code}): {response.text[:300]}")

    # --- ingress -----------------------------------------------------------------------------------

    def _path(self, service: str, key: str | None, handler: str) -> str:
        from urllib.parse import quote

        parts = [service] + ([quote(key, safe="")] if key is not None else []) + [handler]
        return "/".join(parts)

    def call(self, service: str, key: str | None, handler: str, body: Any = None, *,
             idempotency_key: str | None = None, timeout: float = 300) -> Any:
        """Call a handler and wait for its result (the JSON it returned)."""
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        response = httpx.post(f"{self.ingress_url}/{self._path(service, key, handler)}", json=body,
                              headers=headers, timeout=timeout)
        if response.status_code != 200:
            raise ServiceError(f"{service}/{key}/{handler} answered {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def send(self, service: str, key: str | None, handler: str, body: Any = None, *,
             idempotency_key: str | None = None) -> str:
        """Start a handler without waiting (ingress /send); the invocation id."""
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        response = httpx.post(f"{self.ingress_url}/{self._path(service, key, handler)}/send", json=body,
                              headers=headers, timeout=30)
        if response.status_code not in (200, 202):
            raise ServiceError(f"{service}/{key}/{handler}/send answered {response.status_code}: {response.text[:500]}")
        return response.json()["invocationId"]

    def output(self, invocation_id: str, timeout: float = 300) -> Any:
        """Wait for an invocation's result (ingress GET /restate/invocation/<id>/attach)."""
        response = httpx.get(f"{self.ingress_url}/restate/invocation/{invocation_id}/attach", timeout=timeout)
        if response.status_code != 200:
            raise ServiceError(f"invocation {invocation_id} answered {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def wait_status(self, invocation_id: str, statuses: tuple[str, ...] = ("completed",), *,
                    timeout: float = proc.START_HANG_S, poll_s: float = 0.1) -> dict[str, Any]:
        """Until sys_invocation shows the invocation in one of `statuses`; its row. Raises ServiceError
        at the deadline (a hang guard: the statuses are what the caller waits for)."""
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = self.invocation(invocation_id)
            if row and row.get("status") in statuses:
                return row
            time.sleep(poll_s)
        raise ServiceError(f"invocation {invocation_id} did not reach {statuses} within {timeout:.0f} s; last seen: {row}")


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """Stop a detached server by PID (`lab down`): SIGTERM, then SIGKILL after `grace` seconds."""
    import psutil

    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except psutil.TimeoutExpired:
            process.kill()
