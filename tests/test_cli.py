"""The `lab` CLI, run as a student runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from selftest import HANG_LIMIT_S, default_sigint, tail_of

REPO = Path(__file__).resolve().parent.parent
# `lab check` runs real servers: a few seconds here, minutes at a quarter of a core. No test
# asserts how long it took; a run still going after the hang limit is stopped and shown.
pytestmark = pytest.mark.timeout(HANG_LIMIT_S + 120)


def lab(*args: str, home: Path, timeout: float = HANG_LIMIT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAB_STATE_DIR": str(home)}
    try:
        return subprocess.run([sys.executable, "-m", "labkit.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        output = hung.output.decode(errors="replace") if isinstance(hung.output, bytes) else hung.output or ""
        pytest.fail(f"hung: `lab {' '.join(args)}` was still running after {timeout:.0f} s; what it printed "
                    f"last:\n{tail_of(output)}", pytrace=False)


def test_list_shows_every_lab_and_progress(tmp_path):
    out = lab("list", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "01" in out.stdout and "pending" in out.stdout and "0/" in out.stdout


def test_hint_gives_one_more_each_time(tmp_path):
    first = lab("hint", "01", home=tmp_path).stdout
    second = lab("hint", "01", home=tmp_path).stdout
    assert "hint 1/" in first and "hint 2/" not in first
    assert "hint 2/" in second


def test_unknown_lab_is_a_clear_error(tmp_path):
    out = lab("check", "99", home=tmp_path)
    assert out.returncode == 2
    assert "no lab '99'" in out.stdout


def test_check_on_the_starter_fails_and_teaches(tmp_path):
    out = lab("check", "01", home=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "this takes a few seconds" in out.stdout
    assert "Not implemented yet: TODO(lab01)" in out.stdout
    assert "Traceback" not in out.stdout
    assert "lab hint 01" in out.stdout


def test_check_on_the_solution_passes_with_evidence(tmp_path):
    out = lab("check", "01", "--solution", home=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "crash-resume" in out.stdout and "PASSED" in out.stdout
    assert "llm_calls_a=1" in out.stdout and "restarts=1" in out.stdout


def test_repeat_runs_the_check_n_times_and_summarises_the_failures(tmp_path):
    """Given the starter (which fails), When `lab check 01 --repeat 2` runs,
    Then each run gets a line, the summary counts the failed runs and shows the first message once."""
    out = lab("check", "01", "--repeat", "2", home=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "run 1/2 FAILED crash-resume" in out.stdout and "run 2/2 FAILED crash-resume" in out.stdout
    assert "lab 01 --repeat 2: 0/2 runs passed, 2 failed; median" in out.stdout
    assert "crash-resume failed in run(s) 1, 2" in out.stdout
    assert out.stdout.count("Not implemented yet: TODO(lab01)") == 1
    assert "Traceback" not in out.stdout


def test_doctor_reports_the_machine(tmp_path):
    out = lab("doctor", home=tmp_path)
    assert "temporal CLI" in out.stdout and "temporalio" in out.stdout
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("args", [["check", "01", "--path", "/nonexistent/lab"],
                                  ["check", "01", "--solution", "--path", "labs/lab01_temporal_crash"]])
def test_bad_arguments_are_refused(tmp_path, args):
    out = lab(*args, home=tmp_path)
    assert out.returncode == 2, out.stdout


def test_ctrl_c_during_a_check_leaves_no_process_behind(tmp_path):
    """Given a running `lab check`, When the student presses Ctrl-C (SIGINT to the process group),
    Then the CLI says so and every server and worker the check started is gone."""
    import contextlib
    import signal
    import time

    import psutil

    # default_sigint: a terminal's Ctrl-C reaches `lab check` even when this test runs in a background job
    child = subprocess.Popen([sys.executable, "-m", "labkit.cli", "check", "01", "--solution"], cwd=REPO,
                             env={**os.environ, "LAB_STATE_DIR": str(tmp_path)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + HANG_LIMIT_S
        descendants: list[psutil.Process] = []
        while child.poll() is None:  # wait until the worker runs: servers are up by then
            with contextlib.suppress(psutil.Error):
                descendants = psutil.Process(child.pid).children(recursive=True)
                if any("lab01_temporal_crash.worker" in " ".join(p.cmdline()) for p in descendants if p.is_running()):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"hung: the check started no worker in {HANG_LIMIT_S:.0f} s; its processes: "
                            f"{[' '.join(p.cmdline())[:100] for p in descendants]}", pytrace=False)
            time.sleep(0.1)
        assert child.poll() is None, f"the check ended before its worker ran:\n{child.communicate()[0]}"
        os.killpg(child.pid, signal.SIGINT)
        try:
            out, _ = child.communicate(timeout=HANG_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hung: `lab check` was still running {HANG_LIMIT_S:.0f} s after Ctrl-C", pytrace=False)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 130, out
    assert "interrupted" in out
    _, alive = psutil.wait_procs(descendants, timeout=30)  # returns as soon as they are gone
    assert not alive, [" ".join(p.cmdline()) for p in alive]


def test_server_option_reaches_the_check_as_an_environment_variable(tmp_path, monkeypatch):
    """Given `lab check NN --server URL`, When the CLI starts the lab's pytest run,
    Then the run's environment holds LAB_SERVER_URL=URL (and a run without --server does not)."""
    from labkit import cli, course

    seen: list[dict | None] = []

    class Recorder:
        def __init__(self, argv, **kwargs):
            seen.append(kwargs.get("env"))
            self.returncode = 0
            report = Path(argv[argv.index("--lab-report") + 1])
            report.write_text("[]")

        def communicate(self):
            return "", ""

    monkeypatch.setattr(cli.subprocess, "Popen", Recorder)
    monkeypatch.delenv(cli.SERVER_ENV, raising=False)
    lab_01 = course.load().lab("01")
    cli.run_checks(lab_01, ["--solution"], verbose=False, server="http://127.0.0.1:8288")
    cli.run_checks(lab_01, ["--solution"], verbose=False)
    assert seen[0] is not None and seen[0][cli.SERVER_ENV] == "http://127.0.0.1:8288"
    assert seen[1] is None or cli.SERVER_ENV not in seen[1]


def test_server_option_refuses_what_is_not_a_url(tmp_path):
    out = lab("check", "01", "--server", "localhost-8288", home=tmp_path)
    assert out.returncode == 2, out.stdout
    assert "--server wants an http(s) URL" in out.stdout


def test_a_lab_command_from_checks_runs_lab10s_capstone(tmp_path):
    """Given Lab 10's own command (checks/command_lab10_capstone.py, registered by labkit.cli without
    knowing the lab), When `lab capstone --questions 3 --solution` runs, Then it prints the side-by-side
    table for 3 questions and writes the Markdown and the picture where --out says."""
    out = tmp_path / "report"
    done = lab("capstone", "--questions", "3", "--solution", "--out", str(out), home=tmp_path)
    assert done.returncode == 0, tail_of(done.stdout + done.stderr)
    assert "| 3 questions" in done.stdout and "| naive | langgraph | temporal | restate |" in done.stdout, \
        tail_of(done.stdout)
    assert "| 3 questions" in (out / "capstone.md").read_text()
    assert (out / "capstone.svg").read_text().lstrip().startswith("<")
