"""Grade a class: the course's own checks over many submissions, isolated and in parallel.

Grading never runs files from a submission except its lab folders: the checks,
labkit, course.toml and the course LLM are the course's own (pristine). Each
(submission, lab) pair is one pytest process with its own servers, task queues,
databases, ledger and temp dirs, a time limit, and a process group that is
killed whole when the limit passes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

import psutil

from . import course as course_mod
from .course import REPO, Course, Lab
from .grade_keeper import NOTE_ENV
from .grade_plugin import ENABLE_ENV, PREFIX, verified_report
from .pristine import Snapshot, trusted_roots

DEFAULT_TIME_LIMIT_S = 240.0
MARKER_ENV = "LAB_GRADE_RUN"  # inherited by every process a grading run starts: finds its leftovers
_RUNNING: set[str] = set()  # markers of the runs going on now


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
        if self.blocked:  # the check's own words: which run it needed and why there was nothing to inspect
            first = (self.message.strip().splitlines() or [""])[0][:200]
            return first if first.lower().startswith("not checked") else f"not checked: {first}" if first \
                else "not checked (the run it inspects gave nothing to inspect; see the check before)"
        return (self.message.strip().splitlines() or [""])[0][:200]


@dataclass
class LabResult:
    submission: str
    lab: Lab
    folder: Path | None
    root: Path | None = None  # the submission's folder
    checks: list[CheckResult] = field(default_factory=list)
    error: str = ""  # the lab could not be graded at all (missing folder, time limit)
    duration: float = 0.0
    started_at: float = field(default_factory=time.time)  # wall clock, for the JUnit timestamp
    trusted_changes: list[str] = field(default_factory=list)  # files the grader trusts that changed meanwhile
    alongside: set[str] = field(default_factory=set)  # runs that were going at some moment of this one
    note: str = ""  # e.g. the course's files whose edits were ignored

    @property
    def score(self) -> int:
        return sum(c.points for c in self.checks)

    @property
    def graded_folder(self) -> str:
        """The folder graded, inside the submission ("repo-main/labs/lab01_temporal_crash"; "." when
        the submission is the lab folder's files; "" when none was found)."""
        if self.folder is None:
            return ""
        return self.folder.relative_to(self.root).as_posix() if self.root and \
            self.folder.is_relative_to(self.root) else str(self.folder)

    @property
    def graded_shown(self) -> str:
        """graded_folder for a person: where in the submission the graded files were."""
        return {"": "nothing (no lab folder found)", ".": "the files at the submission's top"}.get(
            self.graded_folder, self.graded_folder)

    @property
    def max_score(self) -> int:
        return self.lab.max_points


def find_lab_folder(submission: Path, lab: Lab) -> Path | None:
    """Where a submission keeps the lab: labs/<slug> (a clone of the course), <slug> (a folder holding
    the lab folders), either one level down (a zip of the clone's folder), or the submission itself
    when it holds every file of the starter (a zip of the lab folder's contents)."""
    for candidate in (submission / "labs" / lab.slug, submission / lab.slug):
        if candidate.is_dir():
            return candidate
    nested = sorted(p for p in (*submission.glob(f"*/labs/{lab.slug}"), *submission.glob(f"*/{lab.slug}"))
                    if p.is_dir() and not p.relative_to(submission).parts[0].startswith("."))
    if len(nested) == 1:
        return nested[0]
    starter_files = {p.name for p in lab.starter_dir.glob("*.py")} if lab.starter_dir.is_dir() else set()
    if starter_files and all((submission / name).is_file() for name in starter_files):
        return submission
    return None


def copy_regular_files(folder: Path, dest: Path) -> list[str]:
    """Copy the lab folder's regular files and folders only; return the symlinks left out.

    A symlink could point anywhere on the grading machine, the course's own solutions/ included."""
    skipped = []
    for current, dirs, files in os.walk(folder, followlinks=False):
        here = Path(current)
        target = dest / here.relative_to(folder)
        target.mkdir(parents=True, exist_ok=True)
        for name in list(dirs):
            if (here / name).is_symlink():
                skipped.append(str((here / name).relative_to(folder)))
                dirs.remove(name)
            elif name == "__pycache__":
                dirs.remove(name)
        for name in files:
            path = here / name
            if path.is_symlink() or not path.is_file():
                skipped.append(str(path.relative_to(folder)))
            elif not name.endswith((".pyc", ".pyo")):
                shutil.copy2(path, target / name)
    return sorted(skipped)


def submissions_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def grader_env() -> dict[str, str]:
    """The grader's environment, minus anything that would make Python load a submission's code."""
    drop = {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSAFEPATH", "LAB_PATH",
            "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "TEMPORAL_ADDRESS", "DATABASE_URL", "OPENAI_BASE_URL",
            "OPENAI_API_KEY", "LAB_STATE_DIR"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def processes_of(marker: str) -> list[psutil.Process]:
    """Every running process a grading run started: each inherits the run's marker variable."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER_ENV) == marker:
                found.append(process)
    return found


def sweep(marker: str) -> int:
    """Kill whatever a run left behind (a worker's own child, a server), and wait until it is gone."""
    left = processes_of(marker)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=5)
    return len(left)


def not_graded(lab: Lab, reason: str, passed: dict[str, dict] | None = None) -> list[CheckResult]:
    """Checks without a verdict: the first one carries the reason, the rest were not checked."""
    results, reason_given = [], False
    for check in lab.checks:
        record = (passed or {}).get(check.name)
        if record is not None:
            ok = record["outcome"] == "passed"
            results.append(CheckResult(check.name, check.points if ok else 0, check.points, ok,
                                       record.get("message", ""), float(record.get("duration", 0.0)),
                                       blocked=bool(record.get("blocked"))))
        elif not reason_given:
            results.append(CheckResult(check.name, 0, check.points, False, reason))
            reason_given = True
        else:
            results.append(CheckResult(check.name, 0, check.points, False, reason, blocked=True))
    return results


def pristine_snapshot() -> Snapshot:
    """The files every grading run trusts (the course's checks and kit, its Python), as they are now."""
    return Snapshot.take(trusted_roots(REPO))


def grade_one(submission: Path, lab: Lab, workdir: Path, time_limit: float, log_path: Path | None = None,
              pristine: Snapshot | None = None) -> LabResult:
    """Grade one lab of one submission: a pytest process of the course's own check, its own group,
    servers and temp dirs, a signed report on its stdout, a time limit, and a sweep afterwards.

    `pristine`: the trusted files as they were when grading began (taken now when not given); a run
    after which they differ is not graded."""
    started = time.monotonic()
    pristine = pristine or pristine_snapshot()
    result = LabResult(submission=submission.name, lab=lab, folder=find_lab_folder(submission, lab),
                       root=submission)
    if result.folder is None:
        result.error = f"no folder labs/{lab.slug} in the submission"
        result.checks = not_graded(lab, result.error)
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(f"lab {lab.id}: {result.error} (looked for labs/{lab.slug}, {lab.slug}, "
                                "either one a level down, or the starter's files at the top)\n")
        return result
    workdir.mkdir(parents=True, exist_ok=True)
    graded = workdir / "submitted" / lab.slug  # a snapshot: regular files only, never a symlink
    skipped = copy_regular_files(result.folder, graded)
    result.note = lab.ignored_edits_note(graded)
    key = secrets.token_hex(32).encode()
    marker = uuid.uuid4().hex
    escaped_note = workdir / "escaped.txt"  # the keeper's list; outside the student's sandbox
    env = grader_env()
    # No bytecode written by the run: the trusted trees must not change (labkit.pristine).
    env.update({MARKER_ENV: marker, ENABLE_ENV: "1", NOTE_ENV: str(escaped_note), "PYTHONDONTWRITEBYTECODE": "1"})
    _RUNNING.add(marker)
    # The keeper runs pytest and adopts (PR_SET_CHILD_SUBREAPER) whatever detaches from it.
    argv = [sys.executable, "-m", "labkit.grade_keeper",
            sys.executable, "-m", "pytest", str(lab.check_path), "-q", "-p", "no:cacheprovider",
            "-p", "labkit.grade_plugin", "--rootdir", str(REPO), "--lab-path", str(graded),
            "--basetemp", str(workdir / "tmp"), "--no-header", "--tb=no", "-rN"]
    child = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
        output, _ = child.communicate(key, timeout=time_limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        child.terminate()  # the keeper kills pytest, then everything it adopted
        try:
            output, _ = child.communicate(timeout=15)
        except subprocess.TimeoutExpired:  # the keeper is stuck: kill its group, then give up on the pipe
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # servers and workers die with it (PDEATHSIG)
            try:
                output, _ = child.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                output = b""
    finally:
        sweep(marker)
        _RUNNING.discard(marker)
    escaped = escaped_note.read_text().splitlines() if escaped_note.is_file() else []
    changed = pristine.changes(pristine_snapshot(), relative_to=REPO)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        inside = "" if result.graded_folder == "." else result.graded_folder
        note = (f"lab {lab.id}: graded {submission.name}/{inside}"
                + (" (the lab's files, at the submission's top)" if not inside else "") + "\n")
        note += f"symlinks left out of the graded copy: {', '.join(skipped)}\n" if skipped else ""
        note += f"{result.note}\n" if result.note else ""
        note += "".join(f"left running after the checks (killed): {line}\n" for line in escaped)
        log_path.write_bytes(note.encode() + (output or b""))
    report = verified_report(output or b"", key)
    records = {r["check"]: r for r in (report or {}).get("records", [])}
    if changed:  # nothing this run reported can be trusted
        result.trusted_changes = changed
        result.error = (f"wrote outside its folder: {_listed(changed)} (files the grader trusts changed "
                        "during this run; restore them before grading on)")
        records = {}
    elif timed_out:  # before leftovers: a run stopped at its limit leaves its servers' processes too
        result.error = f"time limit: grading took longer than {time_limit:.0f} s and was stopped"
    elif escaped:
        result.error = (f"left {len(escaped)} process(es) running after its checks, detached from the "
                        f"worker (killed by the grader): {escaped[0]}")
        records = {}
    elif report is None:
        result.error = "the checks did not finish: " + _tail(output)
    elif any(c.name not in records for c in lab.checks):
        result.error = "the check did not run: " + _tail(output)
    result.checks = not_graded(lab, result.error, records)
    result.duration = time.monotonic() - started
    return result


def _listed(paths: list[str], shown: int = 4) -> str:
    return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _stopped(submission: Path, lab: Lab, spoiler: LabResult) -> LabResult:
    """A run not started: an earlier run changed the files every later verdict would depend on."""
    result = LabResult(submission=submission.name, lab=lab, folder=find_lab_folder(submission, lab),
                       root=submission)
    result.error = (f"not graded: grading stopped after the files the grader trusts changed "
                    f"({_listed(spoiler.trusted_changes)}, during {spoiler.submission}'s lab {spoiler.lab.id}); "
                    "restore them and grade again")
    result.checks = not_graded(lab, result.error)
    return result


def _attribute_trusted_changes(results: list[LabResult]) -> None:
    """A run that saw the trusted files change wrote them only if no other run went on meanwhile;
    with others at the same time (--jobs 2) it cannot be told which: say so, name them."""
    for result in results:
        if not result.trusted_changes:
            continue
        alongside = sorted(result.alongside)
        if alongside:
            result.error = (f"not graded: files the grader trusts changed while this ran "
                            f"({_listed(result.trusted_changes)}); this submission or one graded at the same "
                            f"time ({', '.join(alongside)}) wrote them. Restore them and grade these again "
                            "with --jobs 1 to tell which.")
            result.checks = not_graded(result.lab, result.error)


def _tail(output: bytes | None, lines: int = 3) -> str:
    text = (output or b"").decode(errors="replace")
    kept = [line for line in text.strip().splitlines() if not line.startswith(PREFIX)]
    return " | ".join(kept[-lines:])[:300] or "no output"


def grade(submissions: Iterable[Path], labs: list[Lab], *, jobs: int, out: Path,
          time_limit: float = DEFAULT_TIME_LIMIT_S,
          progress: Callable[[LabResult], None] | None = None) -> list[LabResult]:
    """Grade every (submission, lab) pair, `jobs` at a time; write the reports into `out`.

    Each pair's pytest output is kept in out/logs/ for the instructor."""
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(s, lab) for s in submissions for lab in labs]
    results: list[LabResult] = []
    pristine = pristine_snapshot()  # one baseline: a change spoils every run that ends after it
    spoilers: list[LabResult] = []  # runs after which the trusted files differed: start nothing more
    # Which runs went on at the same time, from the runs' states (started, finished), not from
    # timestamps: a slow machine stretches the gaps between two clocks' readings, not the order.
    going: set[str] = set()
    alongside: dict[str, set[str]] = {}
    lock = threading.Lock()

    def run(index: int, submission: Path, lab: Lab, tmp: str) -> LabResult:
        if spoilers:
            return _stopped(submission, lab, spoilers[0])
        me = f"{submission.name} (lab {lab.id})"
        with lock:
            alongside[me] = set(going)
            for other in going:
                alongside[other].add(me)
            going.add(me)
        try:
            result = grade_one(submission, lab, Path(tmp) / f"{index:04d}-{_safe(submission.name)}-{lab.id}",
                               time_limit, out / "logs" / f"{_safe(submission.name)}-lab{lab.id}.log", pristine)
        finally:
            with lock:
                going.discard(me)
        result.alongside = alongside[me]
        if result.trusted_changes:
            spoilers.append(result)
        return result

    with tempfile.TemporaryDirectory(prefix="lab-grade-") as tmp:
        pool = ThreadPoolExecutor(max(1, jobs))
        try:
            futures = [pool.submit(run, i, s, lab, tmp) for i, (s, lab) in enumerate(pairs)]
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                if progress:
                    progress(result)
        except BaseException:  # Ctrl-C: stop what runs, start nothing more
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_running_runs()
            raise
        finally:
            pool.shutdown(wait=True)
    _attribute_trusted_changes(results)
    results.sort(key=lambda r: (r.submission, r.lab.id))
    write_reports(results, labs, out)
    return results


def _stop_running_runs() -> None:
    """Kill every grading run of this process still going (they are in their own sessions)."""
    keepers = []
    for process in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if MARKER_ENV in process.environ():
                process.terminate()  # the keeper kills pytest and whatever detached from it
                keepers.append(process)
    _, stuck = psutil.wait_procs(keepers, timeout=8)
    for process in stuck:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and process.environ().get(MARKER_ENV) in _RUNNING:
                process.kill()


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
        # graded_folder last: the columns before it keep their places for existing spreadsheets
        writer.writerow(["submission", "lab", "score", "max", "failed_checks", "graded_folder"])
        for r in results:
            reasons = [f"{c.name}: {c.reason}" for c in r.checks if not c.passed and not c.blocked]
            blocked = sum(c.blocked for c in r.checks)
            if blocked:
                reasons.append(f"{blocked} more not checked (the run they inspect did not finish)")
            failed = "; ".join(reasons)
            writer.writerow([r.submission, r.lab.id, r.score, r.max_score, failed, r.graded_folder])


def write_junit(submission: str, results: list[LabResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suites = ET.Element("testsuites", name=submission)
    for r in results:
        suite = ET.SubElement(suites, "testsuite", name=f"lab{r.lab.id}_{r.lab.slug}",
                              timestamp=datetime.fromtimestamp(r.started_at).isoformat(),
                              tests=str(len(r.checks)),
                              failures=str(sum(not c.passed and not c.blocked for c in r.checks)),
                              skipped=str(sum(c.blocked for c in r.checks)), errors="0",
                              time=f"{r.duration:.2f}")
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="graded_folder", value=r.graded_folder)
        for c in r.checks:
            case = ET.SubElement(suite, "testcase", classname=f"lab{r.lab.id}", name=c.name,
                                 time=f"{c.duration:.2f}")
            if c.blocked:  # no verdict: it inspects a run that did not finish
                ET.SubElement(case, "skipped", message=c.reason)
            elif not c.passed:
                failure = ET.SubElement(case, "failure", message=c.reason)
                failure.text = c.message
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def gradescope_results(results: list[LabResult]) -> dict:
    """Gradescope's results.json: the total, and one test per check with its points and message."""
    tests = []
    for r in results:
        for c in r.checks:
            output = "passed" if c.passed else (c.reason if c.blocked else c.message or c.reason)
            tests.append({"name": f"lab{r.lab.id} {c.name}", "score": c.points, "max_score": c.max_points,
                          "status": "passed" if c.passed else "failed", "output": output,
                          "visibility": "visible"})
    summary = "\n".join(f"lab{r.lab.id}: {r.score}/{r.max_score}"
                        + f" (graded {r.graded_shown})"
                        + (f" ({r.error})" if r.error else "")
                        + (f"\n  {r.note}" if r.note else "") for r in results)
    return {"score": sum(r.score for r in results), "max_score": sum(r.max_score for r in results),
            "execution_time": round(sum(r.duration for r in results), 2), "output": summary,
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}


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
                  "| check | idea | passed | failed | not checked | pass rate |", "|---|---|---|---|---|---|"]
        for check in lab.checks:
            mine = [c for r in own for c in r.checks if c.name == check.name]
            passed = sum(c.passed for c in mine)
            blocked = sum(c.blocked for c in mine)
            lines.append(f"| {check.name} | {check.concept} | {passed}/{len(own)} | {len(mine) - passed - blocked} "
                         f"| {blocked} | {passed / len(own):.0%} |")
        lines.append("")
        not_graded = [r for r in own if r.error]
        if not_graded:
            lines += ["Not graded in full:", ""] + [f"- {r.submission}: {r.error}" for r in not_graded] + [""]
    return "\n".join(lines)


def load_labs(selection: str | None, the_course: Course | None = None) -> list[Lab]:
    the_course = the_course or course_mod.load()
    if not selection:
        return the_course.labs
    return [the_course.lab(key) for key in selection.split(",") if key.strip()]
