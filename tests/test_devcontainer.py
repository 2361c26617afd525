"""The devcontainer's postStartCommand (.devcontainer/start-services.sh), run as the container runs it.

The script is run in a session of its own with a temp state dir and every `lab up` port moved to a
free one (so it runs beside a student's own `lab up`); when it returns, its whole session is killed,
as a devcontainer may do to a finished postStartCommand. The services and JupyterLab must still
answer, a notebook (a person at it) must use `lab up`'s Temporal and Web UI instead of its own, and
everything is then stopped by PID: `lab down` for the services, the PID file for JupyterLab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from labkit.services import free_port, port_open

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".devcontainer" / "start-services.sh"
HANG_S = 600  # a hang guard (PostgreSQL's first initdb, JupyterLab's start at a quarter core), not a speed target
pytestmark = pytest.mark.timeout(HANG_S * 2)

# every port `lab up` (labkit.background, labkit.postgres) and the script bind, by the service holding it
SERVICE_PORTS = {"temporal": ("LAB_TEMPORAL_PORT", "LAB_TEMPORAL_UI_PORT"), "llm": ("LAB_LLM_PORT",),
                 "web": ("LAB_WEB_PORT",), "sink": ("LAB_SINK_PORT",), "postgres": ("LAB_POSTGRES_PORT",),
                 "restate": ("LAB_RESTATE_INGRESS_PORT", "LAB_RESTATE_ADMIN_PORT"), "jupyter": ("LAB_JUPYTER_PORT",)}
PORTS = (*(name for names in SERVICE_PORTS.values() for name in names), "LAB_RESTATE_NODE_PORT")


def wait_for(what: str, ready, alive, log: Path) -> None:
    """Until `ready()`; fails at once if what should answer has died, else at the hang guard."""
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            pytest.fail(f"{what} died before it answered; its log ends:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"hung: {what} did not answer within {HANG_S} s; its log ends:\n{log.read_text()[-2000:]}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_post_start_script_starts_services_that_outlive_it_and_notebooks_use_them(tmp_path):
    """Given the devcontainer's postStartCommand script, a temp state dir and free ports,
    When it runs and its session is killed once it returns,
    Then lab up's services and JupyterLab answer, the logs are where it said, a notebook run by a
    person uses lab up's Temporal and Web UI (and leaves it running) while a headless one starts
    its own, and all stop by PID."""
    # Not under tmp_path: a concurrent pytest session resets /tmp/pytest-of-<user> to 0700, and as
    # root `lab up`'s PostgreSQL runs as another user who must reach its data dir (tests/test_postgres.py).
    state = Path(tempfile.mkdtemp(prefix="lab-devcontainer-test-")) / "state"
    ports = {name: str(free_port()) for name in PORTS}
    env = {k: v for k, v in os.environ.items() if k not in ("TEMPORAL_ADDRESS", "DATABASE_URL", "LAB_PATH")}
    env.update(LAB_STATE_DIR=str(state), **ports)
    pids: list[int] = []
    try:
        script = subprocess.Popen(["bash", str(SCRIPT)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = script.communicate(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGKILL)
            pytest.fail(f"hung: the postStartCommand did not return within {HANG_S} s:\n{script.communicate()[0]}")
        assert script.returncode == 0, output
        try:  # what a devcontainer may do to a finished postStartCommand: kill what is left of it
            os.killpg(script.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

        registry = json.loads((state / "services.json").read_text())
        assert set(registry) >= {"temporal", "llm", "web", "sink"}, registry
        pids += [entry["pid"] for entry in registry.values()]
        pids.append(int((state / "pg" / "data" / "postmaster.pid").read_text().split()[0]))
        jupyter_pid = int((state / "jupyter.pid").read_text())
        pids.append(jupyter_pid)
        assert "jupyter" in " ".join(psutil.Process(jupyter_pid).cmdline()), output
        for name in ("temporal", "llm", "web", "sink", "postgres"):
            assert f"{name}: started" in output or f"{name}: running at" in output, output
        assert f"logs: {state / 'logs' / 'lab-up.log'}, {state / 'logs' / 'jupyter.log'}" in output, output
        assert "temporal: started" in (state / "logs" / "lab-up.log").read_text()

        running = {*registry, "postgres"}  # restate only where restate-server is installed (npm)
        for service in running:
            for name in SERVICE_PORTS[service]:
                assert port_open(int(ports[name])), f"{service}'s {name} does not answer after the script returned\n{output}"
        assert answers(f"http://127.0.0.1:{ports['LAB_LLM_PORT']}/_health")
        wait_for("JupyterLab", lambda: answers(f"http://127.0.0.1:{ports['LAB_JUPYTER_PORT']}/api"),
                 lambda: psutil.pid_exists(jupyter_pid), state / "logs" / "jupyter.log")

        # a notebook, run by a person (not headless): lab up's Temporal and Web UI, not its own
        probe = ("from pathlib import Path; import sys\n"
                 "from labkit import notebook\n"
                 "services = notebook.start_services(Path(sys.argv[1]))\n"
                 "print(services.address, services.temporal.ui_url)\n"
                 "print(services.describe())\n"
                 "services.stop()\n")
        notebook = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "notebook")], cwd=REPO,
                                  env={**env, "LAB_NOTEBOOK_AUTORUN": "0"}, capture_output=True, text=True,
                                  timeout=HANG_S)
        assert notebook.returncode == 0, notebook.stdout + notebook.stderr
        first = notebook.stdout.splitlines()[0]
        assert first == (f"127.0.0.1:{ports['LAB_TEMPORAL_PORT']} "
                         f"http://localhost:{ports['LAB_TEMPORAL_UI_PORT']}"), notebook.stdout
        assert f"`lab up` (pid {registry['temporal']['pid']}" in notebook.stdout, notebook.stdout
        assert port_open(int(ports["LAB_TEMPORAL_PORT"])), "the notebook stopped lab up's Temporal"
        # a headless run (nbconvert, CI) does not depend on what else runs: servers of its own
        headless = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "headless")], cwd=REPO,
                                  env={**env, "LAB_NOTEBOOK_AUTORUN": "1"}, capture_output=True, text=True,
                                  timeout=HANG_S)
        assert headless.returncode == 0, headless.stdout + headless.stderr
        assert not headless.stdout.startswith(f"127.0.0.1:{ports['LAB_TEMPORAL_PORT']} "), headless.stdout
        assert "`lab up`" not in headless.stdout and "temporal server start-dev" in headless.stdout, headless.stdout

        # the next container start runs it again: what runs is kept, nothing is started twice
        again = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=HANG_S, start_new_session=True)
        assert again.returncode == 0, again.stdout + again.stderr
        for name in ("temporal", "llm", "web", "sink"):
            assert f"{name}: already running (pid {registry[name]['pid']})" in again.stdout, again.stdout
        assert f"jupyter: already running (pid {jupyter_pid})" in again.stdout, again.stdout

        # stopped by PID: lab down (its registry's PIDs, PostgreSQL's postmaster.pid), JupyterLab's PID file
        down = subprocess.run([str(REPO / ".venv" / "bin" / "lab"), "down"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=HANG_S)
        assert down.returncode == 0, down.stdout + down.stderr
        os.kill(jupyter_pid, signal.SIGTERM)
        gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=60)
        assert not alive, f"still running after lab down and SIGTERM: {alive}"
        for name, port in ports.items():
            assert not port_open(int(port)), f"{name} {port} still answers after lab down"
    finally:
        for pid in pids:  # whatever a failed assertion left: by PID, never by name
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        subprocess.run([str(REPO / ".venv" / "bin" / "lab"), "down"], cwd=REPO, env=env, capture_output=True,
                       timeout=HANG_S)
        shutil.rmtree(state.parent, ignore_errors=True)
