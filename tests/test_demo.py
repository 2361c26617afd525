"""`lab demo 01`: the crash scenario on the reference solution, narrated, leaving nothing.

How long the demo takes is not asserted (about 10 s here; bench/run.py times it): a demo that
hangs is stopped by the test's hang limit, and the failure shows how far its story got."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
import time
import xml.etree.ElementTree as ET

import psutil
import pytest
from rich.console import Console

from labkit import course, proc

HANG_LIMIT_S = 600  # the demo's steps wait for states (a poll, a retry timer, a completion)
# the demo imports the check module outside the checks' pytest plugin, which registers its `check` mark
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")


def load_demo():
    path = course.REPO / "checks" / "demo_lab01_temporal_crash.py"
    spec = importlib.util.spec_from_file_location("demo_lab01_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Tee(io.StringIO):
    """Keeps what the demo printed, and passes it on to stdout (pytest shows it if the test hangs)."""

    def write(self, text: str) -> int:
        sys.stdout.write(text)
        return super().write(text)


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.timeout(HANG_LIMIT_S)
def test_demo_tells_the_crash_story_and_stops_everything():
    demo = load_demo()
    before = descendants()
    out = Tee()
    console = Console(file=out, width=240, color_system=None)  # no wrapped lines
    demo.SVG_PATH.unlink(missing_ok=True)
    status = demo.run(console, ui=True, keep=False)
    text = out.getvalue()

    assert status == 0, text
    # B runs first (its committed row has an id drawn per run), then A is killed mid-backoff
    steps = [r"Web UI at http://localhost:\d+", r"worker1 started: pid (\d+)", r"workflow B started",
             r"workflow B completed: row id \d+", r"workflow A started",
             r"parse_json attempt 1 failed .*; retry due in \d\.\d s", r"SIGKILL worker1 pid (\d+)",
             r"told the server the worker is gone \(ResetStickyTaskQueue\)", r"worker2 started: pid (\d+)",
             r"workflow A completed: row id \d+",
             r"LLM calls for this run: 1", r"replay of A's history against the workflow code: no non-determinism"]
    position = 0
    for step in steps:
        found = re.compile(step).search(text, position)
        assert found, f"missing, or out of order: {step!r}\n{text}"
        position = found.end()
    assert re.search(r"worker1 started: pid (\d+)", text).group(1) == re.search(r"SIGKILL worker1 pid (\d+)",
                                                                                 text).group(1)
    for column in ("call_llm", "parse_json", "save_to_db", "backoff 2.0 s", "✖ killed"):
        assert column in text, f"{column!r} missing from the timeline table:\n{text}"

    svg = ET.fromstring(demo.SVG_PATH.read_text())
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"

    assert not proc.live(), f"the demo left managed processes: {proc.live()}"
    deadline = time.monotonic() + 60  # a wait for the state (all gone), not a budget
    while descendants() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    left = descendants() - before
    assert not left, f"the demo left processes: {[psutil.Process(p).cmdline() for p in left]}"


def test_demo_keep_waits_for_enter_then_stops(monkeypatch):
    demo = load_demo()
    asked = []

    def enter(*_):
        # while the demo holds, its servers answer: the Web UI and Temporal are still up
        asked.append([p for p in proc.live() if p.name in ("temporal", "course-llm") and p.alive])
        return ""

    monkeypatch.setattr("builtins.input", enter)
    console = Console(file=io.StringIO(), width=100, color_system=None)
    assert demo.run(console, ui=False, keep=True) == 0
    assert len(asked) == 1 and {p.name for p in asked[0]} == {"temporal", "course-llm"}
    assert not proc.live()


def load_demo_09():
    path = course.REPO / "checks" / "demo_lab09_hatchet_pipeline.py"
    spec = importlib.util.spec_from_file_location("demo_lab09_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(HANG_LIMIT_S)
def test_demo_09_shows_the_retry_of_the_failing_task_only_and_the_idempotent_store():
    """`lab demo 09`: on the reference solution, classify (and only classify) runs again after each 429
    while extract's LLM call was made once; store run twice leaves one row; the demo says plainly that it
    runs on the SDK's in-process mock, not on an engine; and it leaves no process behind."""
    demo = load_demo_09()
    before, managed = descendants(), set(map(id, proc.live()))
    out = Tee()
    status = demo.run(Console(file=out, width=240, color_system=None), ui=False, keep=False)
    text = out.getvalue()

    assert status == 0, text
    assert "not on a Hatchet engine" in text and "Task.mock_run" in text
    steps = [r"extract -> embed -> classify -> store", r"classify  retry_count 0: raised RateLimitError.*429",
             r"classify  retry_count \d: returned .*'label'", r"only classify ran again \(\d attempts\); extract's "
             r"LLM call was made 1 time", r"second run: .*'created': False", r"rows for doc-\w+ in the table: 1",
             r"the run failed at classify, store ran 0 times, 0 rows", r"as the lab says"]
    position = 0
    for step in steps:
        found = re.compile(step).search(text, position)
        assert found, f"missing, or out of order: {step!r}\n{text}"
        position = found.end()
    assert not [p for p in proc.live() if id(p) not in managed], f"the demo left managed processes: {proc.live()}"
    deadline = time.monotonic() + 60  # a wait for the state (all gone), not a budget
    while descendants() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    left = descendants() - before
    assert not left, f"the demo left processes: {[psutil.Process(p).cmdline() for p in left]}"
