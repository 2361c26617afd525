"""Which servers `lab check` uses (docs/decisions/check-servers.md).

A check starts its own Temporal and PostgreSQL even when the shell exports TEMPORAL_ADDRESS and
DATABASE_URL (`eval "$(lab env)"`); LAB_CHECK_USE_RUNNING=1 opts in to the running ones, and the
"servers:" line says which were used. Proved with a Temporal server of the test's own, whose
workflow list shows whether the check's runs reached it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from labkit import course
from labkit.cli import USE_RUNNING_ENV, check_servers
from labkit.services import TemporalServer, free_port

REPO = Path(__file__).resolve().parent.parent
LABS = {lab.id: lab for lab in course.load().labs}
pytestmark = pytest.mark.timeout(1200)  # two real `lab check 01` runs: a hang guard, not a speed target


def test_without_the_opt_in_the_shells_servers_are_dropped():
    env, line = check_servers(LABS["01"], {"TEMPORAL_ADDRESS": "localhost:7233", "HOME": "/home/student",
                                           "DATABASE_URL": "postgresql://x@127.0.0.1:5433/p"})
    assert env == {"HOME": "/home/student"}
    assert line.startswith("servers: the check's own (Temporal, course LLM;"), line
    assert "TEMPORAL_ADDRESS and DATABASE_URL not used" in line and USE_RUNNING_ENV in line, line


def test_the_opt_in_with_nothing_running_refuses_instead_of_failing_the_student():
    with pytest.raises(typer.Exit) as stopped:
        check_servers(LABS["01"], {USE_RUNNING_ENV: "1", "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"})
    assert stopped.value.exit_code == 2


def test_the_opt_in_asks_only_for_the_servers_the_lab_uses():
    """Lab 03 uses PostgreSQL, not Temporal: no Temporal is demanded, DATABASE_URL is kept."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    env, line = check_servers(LABS["03"], {USE_RUNNING_ENV: "1", "DATABASE_URL": url})
    assert env["DATABASE_URL"] == url and "TEMPORAL_ADDRESS" not in env
    assert line == (f"servers ({USE_RUNNING_ENV}=1): PostgreSQL {url} (its own databases there, dropped after); "
                    "the check's own: course LLM (the course LLM always: its ledger is the evidence)"), line


async def workflow_ids(address: str) -> list[str]:
    from temporalio.client import Client

    client = await Client.connect(address)
    return [w.id async for w in client.list_workflows()]


def lab_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labkit.cli", "check", "01", "--solution"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1000, stdin=subprocess.DEVNULL)


def test_lab_check_uses_its_own_servers_unless_told_to_use_the_running_ones(tmp_path):
    """Given a running Temporal server that the shell names (TEMPORAL_ADDRESS, as `lab env` exports),
    When `lab check 01 --solution` runs without the opt-in,
    Then it passes on servers of its own and none of its workflows reach that server;
    When it runs with LAB_CHECK_USE_RUNNING=1,
    Then it passes there, says so, and its workflows are on that server (what the Web UI shows)."""
    server = TemporalServer(tmp_path / "running", ui_port=None).start()
    try:
        base = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", USE_RUNNING_ENV, "DATABASE_URL")}
        base.update(TEMPORAL_ADDRESS=server.address, LAB_STATE_DIR=str(tmp_path / "state"))

        own = lab_check(base)
        output = own.stdout + own.stderr
        assert own.returncode == 0, output
        assert "servers: the check's own (Temporal, course LLM;" in output, output
        assert "TEMPORAL_ADDRESS not used" in output, output
        assert asyncio.run(workflow_ids(server.address)) == [], "the check ran workflows on the shell's server"

        shared = lab_check({**base, USE_RUNNING_ENV: "1"})
        output = shared.stdout + shared.stderr
        assert shared.returncode == 0, output
        assert f"servers ({USE_RUNNING_ENV}=1): Temporal {server.address}; the check's own: course LLM" in output, output
        assert asyncio.run(workflow_ids(server.address)), "the check's workflows did not reach the running server"
    finally:
        server.stop()
