"""Every notebook executes headless against the reference solutions and leaves nothing running.

The notebooks are found two ways, and both must agree: every notebooks/*.ipynb, and every
lab's `notebook` field in course.toml (the single source of truth: a notebook no lab names,
or a lab naming a missing notebook, fails here). Each runs in a fresh kernel on this interpreter
(the venv's ipykernel, whatever kernelspecs the user has) with
    LAB_PATH=solutions/<slug>        the lab folder the notebook works on
and no LAB_NOTEBOOK_AUTORUN: the notebook must see by itself that nobody is at the keyboard
(labkit.notebook.headless: nbclient sends every cell with allow_stdin false), as it does under
`jupyter nbconvert --execute` or papermill, and do the by-hand steps alone.

How long a notebook takes is not asserted (bench/ measures speed). Each cell has a hang limit:
the notebook's metadata (`"lab": {"timeout_s": N}`) or, when higher, CELL_HANG_LIMIT_S (a cell may
run a whole `lab check`); a cell still running then is stopped and the failure shows its source.

"Nothing left behind" is checked twice: when the last cell has run (the notebook must stop
what it started, not leave it to the kernel's exit) and after the kernel has shut down. Processes
are recognised by a token in their environment, which every process the kernel starts inherits,
and by being the kernel's descendants.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from selftest import HANG_LIMIT_S

from labkit import course

REPO = course.REPO
NOTEBOOKS = REPO / "notebooks"
CELL_HANG_LIMIT_S = HANG_LIMIT_S  # a cell may run `lab check` on the solution: a whole check run
DEFAULT_TIMEOUT_S = CELL_HANG_LIMIT_S
TOKEN_VAR = "LAB_NOTEBOOK_TEST_TOKEN"
EXIT_GRACE_S = 60.0  # a process told to stop may take a moment to be gone (a wait for the state, not a budget)
KERNEL = "durable-agents-lab-test"
STATES = REPO / ".lab" / "notebooks"  # labkit.notebook.state_dir: each run's logs, database and ledger


def this_python_kernel(directory: Path) -> str:
    """A kernelspec that runs ipykernel on this very interpreter (the venv's), found before any
    user-level `python3` kernelspec that may point at another Python."""
    spec = directory / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (Durable Agents Lab venv)", "language": "python"}))
    return KERNEL


def notebook_timeout(path: Path) -> float:
    """A cell's hang limit: the notebook's own `timeout_s` if higher than CELL_HANG_LIMIT_S (a lower
    one would make the verdict depend on the machine's speed)."""
    if not path.exists():
        return DEFAULT_TIMEOUT_S
    asked = nbformat.read(path, as_version=4).metadata.get("lab", {}).get("timeout_s", DEFAULT_TIMEOUT_S)
    return max(float(asked), CELL_HANG_LIMIT_S)


def notebook_params() -> list:
    named = {lab.notebook_path.resolve(): lab for lab in course.load().labs if lab.notebook}
    present = {path.resolve() for path in NOTEBOOKS.glob("*.ipynb")}
    params = []
    for path in sorted(named.keys() | present):
        limit = notebook_timeout(path)
        # the hard stop (pytest-timeout) for the whole notebook: above one cell's hang limit (that
        # one says which cell hung), with room for several slow cells, the kernel's start and shutdown
        params.append(pytest.param(path, named.get(path), id=path.stem,
                                   marks=pytest.mark.timeout(2 * limit + 300)))
    return params


def cell_outputs(notebook, err: BaseException, lines: int = 30) -> str:
    """The text the last executed cell printed (the one that hung), its last lines."""
    ran = [c for c in notebook.cells if c.cell_type == "code" and c.get("outputs")]
    if not ran:
        return "(nothing)"
    text = "".join(o.get("text", "") for o in ran[-1].outputs if o.get("output_type") == "stream")
    return "\n".join(text.splitlines()[-lines:]) or "(no printed output)"


def left_behind(token: str, kernel_pid: int | None) -> list[str]:
    """Processes carrying the token, or descending from the kernel, other than the kernel itself."""
    found: dict[int, psutil.Process] = {}
    if kernel_pid is not None:
        try:
            for child in psutil.Process(kernel_pid).children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    for process in psutil.process_iter():
        if process.pid in (os.getpid(), kernel_pid):
            continue
        try:
            if process.environ().get(TOKEN_VAR) == token:
                found[process.pid] = process
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    described = []
    for pid, process in sorted(found.items()):
        try:
            described.append(f"pid {pid} [{process.status()}] {' '.join(process.cmdline())[:160]}")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # gone meanwhile
    return described


def scan_states(states: set[Path], sentinel: str, leaked: set[str]) -> int:
    """Look for `sentinel` in every file of these state dirs (logs, SQLite, ledger); add hits to `leaked`.
    Returns how many files were read."""
    read = 0
    for state in states:
        for file in state.rglob("*"):
            try:
                if file.is_file():
                    read += 1
                    if sentinel.encode() in file.read_bytes():
                        leaked.add(str(file))
            except OSError:  # a file removed meanwhile
                continue
    return read


def still_running(token: str, kernel_pid: int | None, grace: float = EXIT_GRACE_S) -> list[str]:
    deadline = time.monotonic() + grace
    while True:
        found = left_behind(token, kernel_pid)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize(("path", "lab"), notebook_params())
def test_notebook_executes_headless_on_the_solution(path: Path, lab: course.Lab | None, monkeypatch, tmp_path):
    assert lab is not None, (f"notebooks/{path.name} belongs to no lab: set the `notebook` field of its lab "
                             "in course.toml")
    assert path.exists(), f"course.toml names {lab.notebook} for lab {lab.id}, but the file is missing"
    assert lab.solution_dir.is_dir(), f"no reference solution at solutions/{lab.slug} to run the notebook on"
    from labkit.services import unavailable  # a service this machine lacks (Restate without Node.js)

    missing = [reason for reason in map(unavailable, lab.services) if reason]
    if missing:
        pytest.skip(f"notebooks/{path.name} needs {missing[0]}")
    notebook = nbformat.read(path, as_version=4)
    limit = notebook_timeout(path)
    token = uuid.uuid4().hex
    # A student's real key in the environment must reach no output and no log (issue 9, security).
    sentinel = f"sk-sentinel-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", sentinel)
    states_before = set(STATES.glob("*")) if STATES.exists() else set()
    scanned, leaked = 0, set()
    monkeypatch.setenv("LAB_PATH", str(lab.solution_dir))
    for var in ("LAB_NOTEBOOK_AUTORUN", "CI"):  # headless must be seen without being told
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(TOKEN_VAR, token)
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(tmp_path / "jupyter"),
                                                                     os.environ.get("JUPYTER_PATH")])))
    kernel = this_python_kernel(tmp_path / "jupyter")

    client = NotebookClient(notebook, kernel_name=kernel, timeout=limit, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    kernel_pid = None
    try:
        with client.setup_kernel():
            kernel_pid = getattr(client.km.provisioner, "pid", None)
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
                # after every cell: an autorun notebook deletes its state dir in its last cell
                scanned += scan_states(set(STATES.glob("*")) - states_before, sentinel, leaked)
            after_last_cell = still_running(token, kernel_pid)
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed headless on solutions/{lab.slug}:\n{err}", pytrace=False)
    except CellTimeoutError as err:
        pytest.fail(f"hung: a cell of {path.name} was still running after its hang limit ({limit:.0f} s), "
                    f"on solutions/{lab.slug}:\n{err}\nits output so far:\n{cell_outputs(notebook, err)}",
                    pytrace=False)
    finally:
        after_shutdown = still_running(token, None)  # the kernel is gone now: nothing may carry the token
        for line in after_shutdown:  # do not leak them into the next test either
            pid = int(line.split()[1])
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass

    assert not after_last_cell, (f"{path.name} left processes running after its last cell (stop them in the "
                                 "notebook, e.g. services.stop()):\n" + "\n".join(after_last_cell))
    assert not after_shutdown, f"{path.name} left processes behind its kernel:\n" + "\n".join(after_shutdown)
    assert sentinel not in nbformat.writes(notebook), \
        f"{path.name}: observed the OPENAI_API_KEY from the environment in the executed notebook's outputs"
    assert scanned, f"{path.name}: observed no file in a new .lab/notebooks/ state dir; expected its logs and ledger"
    assert not leaked, f"{path.name}: observed the OPENAI_API_KEY in the logs or ledger it wrote: {sorted(leaked)}"


HEADLESS_PROBE = "from labkit import notebook\nprint(repr(notebook.headless()), notebook.autorun())"


@pytest.mark.parametrize(("autorun_var", "expected"), [
    (None, "'the frontend cannot answer input() (nbconvert --execute, papermill, nbclient)' True"),
    ("0", "None False"),
    ("1", "'LAB_NOTEBOOK_AUTORUN=1' True"),
])
def test_a_headless_run_is_seen_without_being_told(autorun_var, expected, monkeypatch, tmp_path):
    """Given a notebook run by nbclient (what `jupyter nbconvert --execute` and papermill use),
    When a cell asks labkit.notebook whether a person is there,
    Then it is told headless (so it kills the worker itself) unless LAB_NOTEBOOK_AUTORUN says otherwise."""
    monkeypatch.delenv("CI", raising=False)
    if autorun_var is None:
        monkeypatch.delenv("LAB_NOTEBOOK_AUTORUN", raising=False)
    else:
        monkeypatch.setenv("LAB_NOTEBOOK_AUTORUN", autorun_var)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(HEADLESS_PROBE)])
    NotebookClient(probe, kernel_name=this_python_kernel(tmp_path / "jupyter"), timeout=CELL_HANG_LIMIT_S,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for o in probe.cells[0].outputs).strip()
    assert printed == expected, f"observed {printed!r}; expected {expected!r}"
