"""Gradescope: build the autograder zip, and grade one submission inside Gradescope's container.

    python -m labkit.gradescope build [--out dist/gradescope-autograder.zip] [--labs 01,02]
    python -m labkit.gradescope run [--root /autograder]        (what run_autograder calls)

The zip holds setup.sh and run_autograder (from gradescope/) at its root, and the course files
grading needs: labkit/, checks/, course.toml, the starters in labs/, pyproject.toml,
requirements.lock, README.md. Not the reference solutions (student code runs in the same
container), not the course's own tests, notebooks or docs. `--labs` is written into
autograder.toml: the labs this assignment grades (default: every lab in course.toml).

`run` grades $ROOT/submission (a clone of the course, a folder holding lab folders, or one lab
folder's files) with the shipped checks, exactly as `lab grade` grades one submission, and writes
$ROOT/results/results.json. Whatever goes wrong, it writes a results.json that says so.
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
import tempfile
import time
import tomllib
import traceback
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import grading
from .course import REPO

ROOT_DEFAULT = Path("/autograder")
SCRIPTS = ("setup.sh", "run_autograder")
SHIPPED = ("pyproject.toml", "requirements.lock", "README.md", "course.toml", "labkit", "checks", "labs")
SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints", ".lab", ".pytest_cache"}
CONFIG = "autograder.toml"


def shipped_files(repo: Path = REPO) -> list[Path]:
    files = []
    for item in SHIPPED:
        path = repo / item
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in candidates:
            rel = file.relative_to(repo)
            if SKIPPED_PARTS & set(rel.parts) or file.suffix in (".pyc", ".pyo"):
                continue
            files.append(rel)
    return files


def build(out: Path, labs: str | None = None, repo: Path = REPO) -> Path:
    """Write the autograder zip; --labs is checked against course.toml now, not at grading time."""
    chosen = grading.load_labs(labs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for script in SCRIPTS:
            info = zipfile.ZipInfo(script, date_time=time.localtime()[:6])
            info.external_attr = (stat.S_IFREG | 0o755) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (repo / "gradescope" / script).read_bytes())
        for rel in shipped_files(repo):
            archive.write(repo / rel, rel.as_posix())
        archive.writestr(CONFIG, "# the labs this assignment grades (lab ids, course.toml)\n"
                                 f"labs = {json.dumps([lab.id for lab in chosen])}\n"
                                 "jobs = 2\n"
                                 f"time_limit = {grading.DEFAULT_TIME_LIMIT_S:.0f}\n")
    tmp.replace(out)
    return out


def config(repo: Path = REPO) -> dict:
    path = repo / CONFIG
    return tomllib.loads(path.read_text()) if path.exists() else {}


def run(root: Path, labs: str | None = None) -> dict:
    """Grade root/submission; write root/results/results.json; return what was written."""
    results_dir = root / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    settings = config()
    started = time.monotonic()
    try:
        chosen = grading.load_labs(labs or ",".join(settings.get("labs", [])) or None)
        submission = root / "submission"
        if not submission.is_dir():
            raise FileNotFoundError(f"no submission folder at {submission}")
        time_limit = float(settings.get("time_limit", grading.DEFAULT_TIME_LIMIT_S))
        with tempfile.TemporaryDirectory(prefix="lab-gradescope-") as tmp, \
                ThreadPoolExecutor(max(1, int(settings.get("jobs", 2)))) as pool:
            futures = [pool.submit(grading.grade_one, submission, lab, Path(tmp) / lab.id, time_limit,
                                   results_dir / "logs" / f"lab{lab.id}.log") for lab in chosen]
            results = [future.result() for future in futures]
        for result in results:  # the run's stdout (the instructor's view in Gradescope)
            print(f"lab{result.lab.id}: {result.score}/{result.max_score}, graded {result.graded_shown}",
                  flush=True)
        data = grading.gradescope_results(results)
    except Exception as exc:  # never leave Gradescope without a results.json
        data = {"score": 0, "execution_time": round(time.monotonic() - started, 2), "visibility": "visible",
                "output": "The autograder itself failed (a problem with the course, not with your code; "
                          f"tell your instructor): {exc}\n{traceback.format_exc()[-2000:]}",
                "tests": []}
    (results_dir / "results.json").write_text(json.dumps(data, indent=2))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.gradescope", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="build the autograder zip")
    make.add_argument("--out", type=Path, default=REPO / "dist" / "gradescope-autograder.zip")
    make.add_argument("--labs", default=None, help="e.g. 01 or 01,02 (default: every lab)")
    grade = commands.add_parser("run", help="grade $ROOT/submission into $ROOT/results/results.json")
    grade.add_argument("--root", type=Path, default=ROOT_DEFAULT)
    grade.add_argument("--labs", default=None)
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            out = build(args.out, args.labs)
        except KeyError as err:
            print(err.args[0], file=sys.stderr)
            return 2
        print(f"{out}: upload it as the assignment's autograder (Gradescope: Configure Autograder, zip file)")
        return 0
    print(f"grading {args.root / 'submission'} with the course at {REPO}", flush=True)
    data = run(args.root, args.labs)
    print(f"score {data['score']}/{data.get('max_score', '?')} -> {args.root / 'results' / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
