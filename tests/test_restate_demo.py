"""`lab demo 07`: the Lab 07 crash scenario on the reference solution, told from the servers' records.

How long the demo takes is not asserted (about 15 s here).
"""

from __future__ import annotations

import importlib.util
import io
import re
import sys
import time

import psutil
import pytest
from rich.console import Console

from labkit import course, proc, restate

pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning"),
              pytest.mark.skipif(restate.unavailable() is not None, reason=str(restate.unavailable()))]


def load_demo():
    path = course.REPO / "checks" / "demo_lab07_restate_chat.py"
    spec = importlib.util.spec_from_file_location("demo_lab07_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Tee(io.StringIO):
    def write(self, text: str) -> int:
        sys.stdout.write(text)
        return super().write(text)


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_demo_07_tells_the_crash_story_and_stops_everything():
    """Given the reference solution, When `lab demo 07` runs,
    Then it reports the kill, the journal at the kill, turn 0 made once by the killed pid and turn 1 by
    both, one delivered post, the queued second ask and the shared history, and leaves nothing running."""
    demo = load_demo()
    before = descendants()
    registered_before = {program.pid for program in proc.live()}  # other tests in this interpreter may have left some
    out = Tee()
    status = demo.run(Console(file=out, width=240, color_system=None), ui=False, keep=False)
    text = out.getvalue()
    assert status == 0, text
    killed = re.search(r"killed service pid (\d+)", text)
    assert killed, text
    assert re.search(r"journal at the kill: Input, GetEagerState, Run 'llm 1', \(its result\), Run 'tool post_message', "
                     r"\(its result\), Run 'llm 2'\n", text), text
    calls = re.search(r"model calls \(turn: pid\): 0: (\d+), 1: (\d+), 1: (\d+)", text)
    assert calls and calls.group(1) == calls.group(2) == killed.group(1) != calls.group(3), text
    assert re.search(r"posts to #\w+: 1 attempt\(s\), 1 delivered", text), text
    assert "'C2': 'pending', 'history': 'completed'" in text, text
    left = [program for program in proc.live() if program.pid not in registered_before]
    assert not left, f"the demo left managed processes: {left}"
    deadline = time.monotonic() + 60  # a wait for the state (all gone), not a budget
    while descendants() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not descendants() - before, f"left running: {descendants() - before}"
