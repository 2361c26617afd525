"""Helpers for the server-fault tests (not tests): a reference solution on its own real servers.

`graded_copy` copies solutions/<slug> to a temp dir as the checks do (labkit.pytest_plugin), so
a test runs the lab's code as real processes without touching the repository. `Lab01Stack`
is Lab 01's solution on a Temporal dev server (state in a db file, so it can be restarted),
the course LLM and a SQLite file, with the evidence a fault test reads from outside the worker.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from labkit import course, temporal
from labkit.harness import WorkerHarness
from labkit.pytest_plugin import LabTarget, Services
from labkit.pytest_plugin import graded_copy as plugin_graded_copy
from labkit.services import CourseLLM, TemporalServer


def graded_copy(lab_id: str, tmp: Path) -> LabTarget:
    """The lab's reference solution, copied and importable under the lab's package name."""
    lab = course.load().lab(lab_id)
    return plugin_graded_copy(lab, lab.solution_dir, tmp / "graded")


@dataclass
class Lab01Stack:
    """Lab 01's solution: one worker process, a restartable Temporal server, the course LLM."""

    tmp: Path
    temporal: TemporalServer = field(init=False)
    llm: CourseLLM = field(init=False)
    harness: WorkerHarness = field(init=False)

    def __post_init__(self) -> None:
        self.temporal = TemporalServer(self.tmp / "temporal", ui_port=None, db_file=self.tmp / "temporal.db")
        self.llm = CourseLLM(self.tmp / "llm", rules_files=[course.COURSE_TOML])
        self.db_path = self.tmp / "work" / "lab01.sqlite"

    def start(self) -> Lab01Stack:
        for server in (self.temporal, self.llm):
            server.launch()
        self.temporal.wait_ready()
        self.llm.wait_ready()
        services = Services(temporal_address=self.temporal.address, course_llm=self.llm, temporal=self.temporal)
        (self.tmp / "work").mkdir(exist_ok=True)
        self.harness = WorkerHarness(graded_copy("01", self.tmp), services, self.tmp / "work", lab="01",
                                     key=uuid.uuid4().hex[:8], LAB01_DATABASE_URL=f"sqlite:///{self.db_path}")
        return self

    async def start_worker(self, client: Client) -> set[str]:
        """Start the worker process; its identities once it polls."""
        return await self.harness.wait_polling(client, self.harness.start_worker())

    def llm_calls(self, marker: str) -> list:
        """Ledger rows of this stack's worker whose prompt carries `marker`."""
        return [e for e in self.llm.ledger().entries(caller=self.harness.api_key) if marker in e.prompt]

    def rows(self, workflow_id: str) -> list[tuple]:
        if not self.db_path.exists():
            return []
        with sqlite3.connect(self.db_path) as db:
            return db.execute("SELECT id, workflow_id, summary FROM analysis WHERE workflow_id = ?",
                              (workflow_id,)).fetchall()

    def stop(self) -> None:
        """Everything this stack started, by its own handles: workers, then the servers."""
        if hasattr(self, "harness"):
            self.harness.close()
        self.llm.stop()
        self.temporal.stop()


def analyze_input(marker: str) -> dict:
    return {"prompt": f"Analyze this customer review {marker}: the parcel came two days late, "
                      f"but support sorted it out in minutes."}


def attempts(history: WorkflowHistory) -> dict[str, tuple[int, str]]:
    """Activity name -> (the attempt that closed it, its outcome), from the recorded history."""
    return {run.name: (run.attempt, run.outcome) for run in temporal.activity_runs(history)}


def started_last_failures(history: WorkflowHistory, activity: str) -> list[str]:
    """The last_failure on each ActivityTaskStarted of `activity`, causes included, as
    "message [type] <- cause [type] <- ..." (type: the exception class an SDK recorded)."""
    scheduled = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                 for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED}
    found = []
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            continue
        attrs = event.activity_task_started_event_attributes
        if scheduled.get(attrs.scheduled_event_id) == activity and attrs.HasField("last_failure"):
            failure, texts = attrs.last_failure, []
            while True:
                kind = failure.application_failure_info.type if failure.HasField("application_failure_info") else ""
                texts.append(f"{failure.message} [{kind}]" if kind else failure.message)
                if not failure.HasField("cause"):
                    break
                failure = failure.cause
            found.append(" <- ".join(texts))
    return found


async def wait_for(condition, timeout: float, what: str, every: float = 0.05):
    """Await `condition()` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"observed: {what} did not happen within {timeout:.0f} s")

