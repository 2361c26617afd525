"""`lab up` / `lab down`: the course services in the background, on fixed ports, state under .lab/.

Temporal 7233 (Web UI 8233), the course LLM 8300, the course web 8310 (labkit.web), PostgreSQL 5433
(labkit.postgres).

Temporal keeps its history in .lab/temporal/temporal.db, so workflows survive a
`lab down` / `lab up` (and a devcontainer restart). The PIDs are kept in
.lab/services.json; `lab down` stops exactly those processes, after checking
each PID still runs the program it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Iterator

import psutil

from . import postgres
from .course import COURSE_TOML
from .services import CourseLLM, ServiceError, TemporalServer, port_open
from .sink import NotificationSink
from .web import CourseWeb, WebError
from .state import STATE_DIR


def _port(variable: str, default: int) -> int:
    """A `lab up` port: the course's default, or LAB_..._PORT when that one is taken on this machine
    (and for tests that run `lab up` beside a student's own)."""
    return int(os.environ.get(variable) or default)


TEMPORAL_PORT = _port("LAB_TEMPORAL_PORT", 7233)
TEMPORAL_UI_PORT = _port("LAB_TEMPORAL_UI_PORT", 8233)
LLM_PORT = _port("LAB_LLM_PORT", 8300)
WEB_PORT = _port("LAB_WEB_PORT", 8310)  # the course web (labkit.web): labs 04 and 05 search and fetch there
SINK_PORT = _port("LAB_SINK_PORT", 8320)  # the notification sink (labkit.sink): lab 06's chat service
# restate-server's own default ports (Lab 07)
RESTATE_INGRESS_PORT = _port("LAB_RESTATE_INGRESS_PORT", 8080)
RESTATE_ADMIN_PORT = _port("LAB_RESTATE_ADMIN_PORT", 9070)
RESTATE_NODE_PORT = _port("LAB_RESTATE_NODE_PORT", 5122)
REGISTRY = STATE_DIR / "services.json"
OWN_TEMPORAL = f"localhost:{TEMPORAL_PORT}"  # TEMPORAL_ADDRESS naming these is not "another server"
STUDENT_KEY = "lab-student"


def student_env() -> dict[str, str]:
    """What a student's shell needs to reach the background services."""
    return {
        "TEMPORAL_ADDRESS": os.environ.get("TEMPORAL_ADDRESS", f"localhost:{TEMPORAL_PORT}"),
        "OPENAI_BASE_URL": f"http://127.0.0.1:{LLM_PORT}/v1",
        "OPENAI_API_KEY": STUDENT_KEY,
        "DATABASE_URL": os.environ.get("DATABASE_URL", postgres.up_url()),
        "COURSE_WEB_URL": f"http://127.0.0.1:{WEB_PORT}",
        "LAB06_NOTIFY_URL": f"http://127.0.0.1:{SINK_PORT}/api/messages",
        "LAB07_NOTIFY_URL": f"http://127.0.0.1:{SINK_PORT}/api/messages",
        "RESTATE_INGRESS_URL": f"http://127.0.0.1:{RESTATE_INGRESS_PORT}",
        "RESTATE_ADMIN_URL": f"http://127.0.0.1:{RESTATE_ADMIN_PORT}",
    }


def _registry() -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(REGISTRY.read_text())
    return {}


def _running(entry: dict) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(entry["pid"])
        if process.is_running() and entry["program"] in " ".join(process.cmdline()):
            return process
    return None


def running_pid(name: str) -> int | None:
    """The PID of `lab up`'s service `name` ("temporal", "llm", ...) if it runs, else None."""
    entry = _registry().get(name)
    process = _running(entry) if entry else None
    return process.pid if process else None


def up() -> Iterator[str]:
    registry = _registry()
    wanted = []
    if os.environ.get("TEMPORAL_ADDRESS", OWN_TEMPORAL) not in (OWN_TEMPORAL, f"127.0.0.1:{TEMPORAL_PORT}"):
        yield f"Temporal: using TEMPORAL_ADDRESS={os.environ['TEMPORAL_ADDRESS']} (not starting one)"
    else:
        wanted.append(("temporal", lambda: TemporalServer(
            STATE_DIR / "temporal", port=TEMPORAL_PORT, ui_port=TEMPORAL_UI_PORT,
            db_file=STATE_DIR / "temporal" / "temporal.db", detached=True), [TEMPORAL_PORT, TEMPORAL_UI_PORT]))
    wanted.append(("llm", lambda: CourseLLM(STATE_DIR, rules_files=[COURSE_TOML], port=LLM_PORT,
                                            detached=True), [LLM_PORT]))
    wanted.append(("web", lambda: CourseWeb(STATE_DIR, port=WEB_PORT, detached=True), [WEB_PORT]))
    wanted.append(("sink", lambda: NotificationSink(STATE_DIR, port=SINK_PORT, detached=True), [SINK_PORT]))
    from . import restate  # Lab 07: the Restate server from npm, when it is installed

    missing = restate.unavailable()
    if missing:
        yield f"restate: not started: {missing}"
    else:
        wanted.append(("restate", lambda: restate.RestateServer(
            STATE_DIR / "restate", ingress_port=RESTATE_INGRESS_PORT, admin_port=RESTATE_ADMIN_PORT,
            node_port=RESTATE_NODE_PORT, detached=True), [RESTATE_INGRESS_PORT, RESTATE_ADMIN_PORT]))
    started = []
    for name, make, ports in wanted:
        if name in registry and _running(registry[name]):
            yield f"{name}: already running (pid {registry[name]['pid']})"
            continue
        busy = [port for port in ports if port_open(port)]
        if busy:
            yield (f"{name}: port {busy[0]} is taken by another program; stop it, or point the course "
                   f"at it with TEMPORAL_ADDRESS (see `lab doctor`)")
            continue
        service = make().launch()
        started.append((name, service))
        registry[name] = {"pid": service.process.pid, "program": Path(service.process.argv[0]).name
                          if name in ("temporal", "restate") else f"labkit.{name}"}
    for name, service in started:
        try:
            service.wait_ready()
            yield f"{name}: started (pid {service.process.pid})"
        except (ServiceError, WebError) as err:
            registry.pop(name, None)
            yield f"{name}: FAILED to start: {err}"
    REGISTRY.parent.mkdir(parents=True, exist_ok=True)
    REGISTRY.write_text(json.dumps(registry, indent=2))
    if os.environ.get("DATABASE_URL", postgres.up_url()) != postgres.up_url():
        yield "PostgreSQL: using DATABASE_URL (not starting one)"
    else:
        try:
            yield f"postgres: running at {postgres.up()} (data in {postgres.UP_STATE})"
        except ServiceError as err:
            yield f"postgres: FAILED to start: {err}"
    if "temporal" in registry:
        yield f"Temporal Web UI: http://localhost:{TEMPORAL_UI_PORT}"
    if "llm" in registry:  # README "Where the LLM ledger is": what a row holds
        yield f"LLM ledger: {CourseLLM(STATE_DIR).ledger_dir / 'ledger.sqlite'} (table requests)"
    yield "In your shell:  eval \"$(.venv/bin/lab env)\"   (or: " + " ".join(
        f"{k}={v}" for k, v in student_env().items()) + ")"


def down() -> Iterator[str]:
    registry = _registry()
    if postgres.down():
        yield "postgres: stopped (data kept)"
    if not registry:
        yield "nothing else to stop (no services started by `lab up`)"
    for name, entry in registry.items():
        process = _running(entry)
        if process is None:
            yield f"{name}: not running"
            continue
        tree = [process, *process.children(recursive=True)]
        for member in tree:
            with contextlib.suppress(psutil.Error):
                member.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=10)
        for member in alive:
            with contextlib.suppress(psutil.Error):
                member.kill()
        yield f"{name}: stopped (pid {entry['pid']})"
    with contextlib.suppress(FileNotFoundError):
        REGISTRY.unlink()
