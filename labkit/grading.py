"""Grade a class: the course's own checks over many submissions, isolated and in parallel.

Grading never runs files from a submission except its lab folders: the checks,
labkit, course.toml and the course LLM are the course's own (pristine). Each
(submission, lab) pair is one pytest process with its own servers, task queues,
databases, ledger and temp dirs, a time limit, and a process group that is
killed whole when the limit passes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import course as course_mod
from .course import REPO, Course, Lab

DEFAULT_TIME_LIMIT_S = 240.0


@dataclass
class CheckResult:
    name: str
    points: int
    max_points: int
    passed: bool
    message: str = ""
    duration: float = 0.0
    blocked: bool = False  # not checked: the scenario it inspects failed earlier

    @property
    def reason(self) -> str:
        """The failure in one line, for the CSV."""
        if self.blocked:
            return "not checked (the run it inspects failed)"
        return (self.message.strip().splitlines() or [""])[0][:200]


@dataclass
class LabResult:
    submission: str
    lab: Lab
    folder: Path | None
    checks: list[CheckResult] = field(default_factory=list)
    error: str = ""  # the lab could not be graded at all (missing folder, time limit)
    duration: float = 0.0

    @property
    def score(self) -> int:
        return sum(c.points for c in self.checks)

    @property
    def max_score(self) -> int:
        return self.lab.max_points


def find_lab_folder(submission: Path, lab: Lab) -> Path | None:
    """A submission is a clone of the course (labs/<slug>) or a folder holding the lab folders."""
    for candidate in (submission / "labs" / lab.slug, submission / lab.slug):
        if candidate.is_dir():
            return candidate
    return None


def submissions_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def grader_env() -> dict[str, str]:
    """The grader's environment, minus anything that would make Python load a submission's code."""
    drop = {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "LAB_PATH"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def grade_one(submission: Path, lab: Lab, workdir: Path, time_limit: float) -> LabResult:
    started = time.monotonic()
    result = LabResult(submission=submission.name, lab=lab, folder=find_lab_folder(submission, lab))
    all_checks = [(c.name, c.points) for c in lab.checks]
    if result.folder is None:
        result.error = f"no folder labs/{lab.slug} in the submission"
        result.checks = [CheckResult(n, 0, p, False, result.error) for n, p in all_checks]
        return result
    workdir.mkdir(parents=True, exist_ok=True)
    report, junit = workdir / "report.json", workdir / "junit.xml"
    argv = [sys.executable, "-m", "pytest", str(lab.check_path), "-q", "-p", "no:cacheprovider",
            "--rootdir", str(REPO), "--lab-path", str(result.folder.resolve()), "--lab-report", str(report),
            "--junitxml", str(junit), "--basetemp", str(workdir / "tmp"), "--no-header", "--tb=no"]
    with open(workdir / "pytest.log", "wb") as log:
        child = subprocess.Popen(argv, cwd=REPO, env=grader_env(), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            child.wait(time_limit)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # its servers and workers die with it (PDEATHSIG)
            child.wait()
            result.error = f"time limit: grading took longer than {time_limit:.0f} s and was stopped"
    records = json.loads(report.read_text()) if report.exists() else []
    points = dict(all_checks)
    seen = {r["check"]: r for r in records}
    for name, max_points in all_checks:
        record = seen.get(name)
        if record is None:
            why = result.error or "the check did not run: " + _tail(workdir / "pytest.log")
            result.checks.append(CheckResult(name, 0, max_points, False, why))
            continue
        passed = record["outcome"] == "passed"
        result.checks.append(CheckResult(name, max_points if passed else 0, points[name], passed,
                                         record.get("message", ""), record.get("duration", 0.0),
                                         blocked=bool(record.get("blocked"))))
    result.duration = time.monotonic() - started
    return result


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def grade(submissions: Iterable[Path], labs: list[Lab], *, jobs: int, out: Path,
          time_limit: float = DEFAULT_TIME_LIMIT_S,
          progress: Callable[[LabResult], None] | None = None) -> list[LabResult]:
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(s, lab) for s in submissions for lab in labs]
    results: list[LabResult] = []
    with tempfile.TemporaryDirectory(prefix="lab-grade-") as tmp, ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(grade_one, s, lab, Path(tmp) / f"{i:04d}-{_safe(s.name)}-{lab.id}", time_limit)
                   for i, (s, lab) in enumerate(pairs)]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            if progress:
                progress(result)
    results.sort(key=lambda r: (r.submission, r.lab.id))
    write_reports(results, labs, out)
    return results


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)[:60]


# --- outputs ---------------------------------------------------------------------------------------

def write_reports(results: list[LabResult], labs: list[Lab], out: Path) -> None:
    write_csv(results, out / "grades.csv")
    by_submission: dict[str, list[LabResult]] = {}
    for result in results:
        by_submission.setdefault(result.submission, []).append(result)
    for submission, own in by_submission.items():
        write_junit(submission, own, out / "junit" / f"{_safe(submission)}.xml")
        write_gradescope(own, out / "gradescope" / _safe(submission) / "results.json")
    (out / "summary.md").write_text(class_summary(results, labs))


def write_csv(results: list[LabResult], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", "lab", "score", "max", "failed_checks"])
        for r in results:
            failed = "; ".join(f"{c.name}: {c.reason}" for c in r.checks if not c.passed and not c.blocked)
            blocked = sum(c.blocked for c in r.checks)
            if blocked:
                failed += f"; {blocked} more not checked (the run they inspect failed)"
            writer.writerow([r.submission, r.lab.id, r.score, r.max_score, failed])


def write_junit(submission: str, results: list[LabResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suites = ET.Element("testsuites", name=submission)
    for r in results:
        suite = ET.SubElement(suites, "testsuite", name=f"lab{r.lab.id}_{r.lab.slug}",
                              tests=str(len(r.checks)), failures=str(sum(not c.passed for c in r.checks)),
                              time=f"{r.duration:.2f}")
        for c in r.checks:
            case = ET.SubElement(suite, "testcase", classname=f"lab{r.lab.id}", name=c.name,
                                 time=f"{c.duration:.2f}")
            if not c.passed:
                failure = ET.SubElement(case, "failure", message=c.reason)
                failure.text = c.message
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def gradescope_results(results: list[LabResult]) -> dict:
    tests = []
    for r in results:
        for c in r.checks:
            tests.append({"name": f"lab{r.lab.id} {c.name}", "score": c.points, "max_score": c.max_points,
                          "status": "passed" if c.passed else "failed",
                          "output": c.message if not c.passed else "passed", "visibility": "visible"})
    return {"score": sum(r.score for r in results), "max_score": sum(r.max_score for r in results),
            "execution_time": round(sum(r.duration for r in results), 2), "tests": tests}


def write_gradescope(results: list[LabResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gradescope_results(results), indent=2))


def class_summary(results: list[LabResult], labs: list[Lab]) -> str:
    submissions = sorted({r.submission for r in results})
    lines = ["# Class summary", "", f"{len(submissions)} submissions, labs "
             + ", ".join(lab.id for lab in labs), ""]
    for lab in labs:
        own = [r for r in results if r.lab.id == lab.id]
        if not own:
            continue
        mean = sum(r.score for r in own) / len(own)
        lines += [f"## Lab {lab.id}: {lab.title}", "",
                  f"mean score {mean:.1f} / {lab.max_points}", "",
                  "| check | idea | passed | pass rate |", "|---|---|---|---|"]
        for check in lab.checks:
            passed = sum(any(c.name == check.name and c.passed for c in r.checks) for r in own)
            lines.append(f"| {check.name} | {check.concept} | {passed}/{len(own)} | {passed / len(own):.0%} |")
        lines.append("")
    return "\n".join(lines)


def load_labs(selection: str | None, the_course: Course | None = None) -> list[Lab]:
    the_course = the_course or course_mod.load()
    if not selection:
        return the_course.labs
    return [the_course.lab(key) for key in selection.split(",") if key.strip()]
