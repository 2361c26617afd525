"""Gradescope: build the autograder zip, and grade one submission inside Gradescope's container.

    python -m labkit.gradescope build [--out dist/gradescope-autograder.zip] [--labs 01,02]
    python -m labkit.gradescope run [--root /autograder]        (what run_autograder calls)

The zip holds setup.sh and run_autograder (from gradescope/) at its root, and the course files
grading needs: labkit/, checks/, course.toml, the starters in labs/, the course's own files of each
lab folder (solutions/<slug>/ minus the student's `edits` and README.md: the worker, models, crash
helpers grading lays over a submission), pyproject.toml, requirements.lock, README.md. Not the
reference solutions (student code runs in the same container), not the course's own tests,
notebooks or docs. `--labs` is written into autograder.toml: the labs this assignment grades
(default: every lab in course.toml).

labs/ and the course's lab files are taken from git (`--ref`, default HEAD), not from the working
tree: an instructor who solved the labs in their clone must not ship those solutions. Outside a
git checkout they come from the working tree, with a warning. Either way a lab whose every student
file is the reference solution's is refused.

`run` grades $ROOT/submission (a clone of the course, a folder holding lab folders, or one lab
folder's files) with the shipped checks, exactly as `lab grade` grades one submission, and writes
$ROOT/results/results.json. Whatever goes wrong, it writes a results.json that says so.
"""

from __future__ import annotations

import argparse
import io
import json
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import traceback
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import course, grading
from .course import REPO, same_code

ROOT_DEFAULT = Path("/autograder")
SCRIPTS = ("setup.sh", "setup-node.sh", "run_autograder")
NPM_SERVICES = {"restate"}  # course.toml `services` whose server npm ships (package-lock.json pins it)
NPM_FILES = ("package.json", "package-lock.json")
SHIPPED = ("pyproject.toml", "requirements.lock", "README.md", "course.toml", "labkit", "checks")  # + labs/: from git
SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints", ".lab", ".pytest_cache"}
CONFIG = "autograder.toml"


class BuildError(RuntimeError):
    """The zip cannot be built as asked; the message says why and what to do."""


def _skipped(rel: Path) -> bool:
    return bool(SKIPPED_PARTS & set(rel.parts)) or rel.suffix in (".pyc", ".pyo")


def shipped_files(repo: Path = REPO, items: tuple[str, ...] = SHIPPED) -> list[Path]:
    files = []
    for item in items:
        path = repo / item
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in candidates:
            rel = file.relative_to(repo)
            if not _skipped(rel):
                files.append(rel)
    return files


@dataclass
class LabFiles:
    """labs/ and the course's lab files as they go into the zip, and where they came from."""

    files: dict[str, bytes]  # "labs/<slug>/x.py", "solutions/<slug>/worker.py" -> content
    origin: str
    from_git: bool
    differs: list[str] = field(default_factory=list)  # working-tree files under labs/ not as shipped


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, timeout=120)


def _committed_tree(repo: Path, ref: str, prefix: str, folder: str) -> dict[str, bytes] | None:
    """{"folder/rel/path": bytes} of `folder` at `ref`, or None when the commit has no such folder."""
    done = _git(repo, "archive", "--format=tar", f"{ref}:{prefix}{folder}")
    if done.returncode != 0:
        return None
    found = {}
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        for member in tar.getmembers():
            rel = Path(folder) / member.name
            if member.isfile() and not _skipped(rel):
                found[rel.as_posix()] = tar.extractfile(member).read()
    return found


def _git_prefix(repo: Path) -> str | None:
    """The repo folder's path inside its git checkout ("" at the top), or None outside git."""
    try:
        done = _git(repo, "rev-parse", "--is-inside-work-tree", "--show-prefix")
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.decode().splitlines()
    if done.returncode != 0 or not lines or lines[0].strip() != "true":
        return None
    return lines[1].strip() if len(lines) > 1 else ""


def _working_tree(repo: Path, folder: str) -> dict[str, bytes]:
    return {rel.as_posix(): (repo / rel).read_bytes() for rel in shipped_files(repo, (folder,))}


def lab_files(repo: Path, labs: list[course.Lab], ref: str = "HEAD") -> LabFiles:
    """The starters (all of labs/) and each chosen lab's course files, from git at `ref` when `repo`
    is a git checkout, else from the working tree."""
    prefix = _git_prefix(repo)
    if prefix is None:
        shipped = _working_tree(repo, "labs")
        solutions = _working_tree(repo, "solutions") if (repo / "solutions").is_dir() else {}
        result = LabFiles(shipped, f"the working tree of {repo} (not a git checkout: make sure labs/ holds "
                                   "the starters)", from_git=False)
    else:
        commit = _git(repo, "rev-parse", "--short", f"{ref}^{{commit}}")
        if commit.returncode != 0:
            raise BuildError(f"git has no commit {ref!r} in {repo}: {commit.stderr.decode().strip()}")
        shipped = _committed_tree(repo, ref, prefix, "labs")
        if shipped is None:
            raise BuildError(f"commit {ref} has no labs/ folder: commit the starters, then build again")
        solutions = _committed_tree(repo, ref, prefix, "solutions") or {}
        result = LabFiles(shipped, f"git {ref} (commit {commit.stdout.decode().strip()})", from_git=True)
        here = _working_tree(repo, "labs")
        result.differs = sorted(path for path in set(here) | set(shipped) if here.get(path) != shipped.get(path))
    for lab in labs:
        starter = f"labs/{lab.slug}/"
        if not any(path.startswith(starter) for path in result.files):
            raise BuildError(f"{result.origin} has no {starter}: commit lab {lab.id}'s starter, then build again")
        own = f"solutions/{lab.slug}/"  # the harness files grading lays over a submission (Lab.course_files)
        for path, content in solutions.items():
            name = path[len(own):]
            if path.startswith(own) and "/" not in name and name not in lab.edits and name != "README.md":
                result.files[path] = content
    return result


def refuse_solved(files: LabFiles, labs: list[course.Lab], repo: Path) -> None:
    """A lab whose every student file in the zip is the reference solution's would hand the solution
    to every student: refuse it."""
    with tempfile.TemporaryDirectory(prefix="lab-gradescope-check-") as tmp:
        for lab in labs:
            reference = repo / "solutions" / lab.slug
            if not reference.is_dir():
                continue
            same = []
            for name in lab.edits:
                content = files.files.get(f"labs/{lab.slug}/{name}")
                if content is None or not (reference / name).is_file():
                    break
                shipped = Path(tmp) / lab.slug / name
                shipped.parent.mkdir(parents=True, exist_ok=True)
                shipped.write_bytes(content)
                if not same_code(shipped, reference / name):
                    break
                same.append(name)
            else:
                raise BuildError(
                    f"labs/{lab.slug} in {files.origin} is solved: {', '.join(same)} "
                    f"{'is' if len(same) == 1 else 'are'} the reference solution's. The zip would hand it "
                    "to every student; ship the starter (restore labs/ from the course's repository) and "
                    "build again")


def build(out: Path, labs: str | None = None, repo: Path = REPO, ref: str = "HEAD",
          report=print) -> Path:
    """Write the autograder zip; --labs is checked against course.toml now, not at grading time."""
    chosen = grading.load_labs(labs, course.load(repo / "course.toml"))
    files = lab_files(repo, chosen, ref)
    refuse_solved(files, chosen, repo)
    needs_npm = any(NPM_SERVICES & set(lab.services) for lab in chosen)
    missing = [name for name in NPM_FILES if needs_npm and not (repo / name).is_file()]
    if missing:
        raise BuildError(f"{', '.join(missing)} missing in {repo}: a lab this zip grades needs a server npm "
                         "ships (restate-server); restore them from the course's repository")
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
        if needs_npm:  # setup-node.sh then runs npm ci
            for name in NPM_FILES:
                archive.write(repo / name, name)
        for path in sorted(files.files):
            archive.writestr(path, files.files[path], zipfile.ZIP_DEFLATED)
        archive.writestr(CONFIG, "# the labs this assignment grades (lab ids, course.toml)\n"
                                 f"labs = {json.dumps([lab.id for lab in chosen])}\n"
                                 "jobs = 2\n"
                                 f"time_limit = {grading.DEFAULT_TIME_LIMIT_S:.0f}\n"
                                 f"# labs/ and the course's lab files from {files.origin}\n")
    tmp.replace(out)
    report(f"labs/ (the starters) and the course's lab files: from {files.origin}")
    if not files.from_git:
        report("warning: not a git checkout, so labs/ was packed as it is on disk; a solved lab is refused, "
               "a half-solved one is not")
    elif files.differs:
        shown = ", ".join(files.differs[:5]) + (f" and {len(files.differs) - 5} more" if len(files.differs) > 5 else "")
        report(f"not shipped: your working tree's changes to {shown} (the zip holds the committed starter)")
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
    make.add_argument("--ref", default="HEAD", help="the git commit whose labs/ (the starters) are shipped")
    grade = commands.add_parser("run", help="grade $ROOT/submission into $ROOT/results/results.json")
    grade.add_argument("--root", type=Path, default=ROOT_DEFAULT)
    grade.add_argument("--labs", default=None)
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            out = build(args.out, args.labs, ref=args.ref)
        except KeyError as err:
            print(err.args[0], file=sys.stderr)
            return 2
        except BuildError as err:
            print(f"no zip built: {err}", file=sys.stderr)
            return 2
        print(f"{out}: upload it as the assignment's autograder (Gradescope: Configure Autograder, zip file)")
        return 0
    print(f"grading {args.root / 'submission'} with the course at {REPO}", flush=True)
    data = run(args.root, args.labs)
    print(f"score {data['score']}/{data.get('max_score', '?')} -> {args.root / 'results' / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
