"""What every sweep scenario needs: a graded copy of the lab folder, a slower course LLM, and the
one line that says why a student process died.

The copy is made the way the checks make theirs (labkit.pytest_plugin.make_target), so the
sweep runs exactly the code `lab check` grades, and never writes into solutions/ or labs/.
Each lab's scenario is checks/scenario_<slug>.py (labkit.sweep.load_scenario).
"""

from __future__ import annotations

import re
from pathlib import Path

from labkit import course
from labkit.feedback import student_error
from labkit.llm.rules import RuleBook
from labkit.pytest_plugin import LabTarget
from labkit.pytest_plugin import graded_copy as plugin_graded_copy


def graded_copy(lab_id: str, workdir: Path, source: Path | None = None) -> LabTarget:
    """The lab folder (default: its reference solution) copied under workdir, importable by its
    slug, with the course's own copy of every file that is not the student's (as the checks grade)."""
    lab = course.load().lab(lab_id)
    source = Path(source).resolve() if source else lab.solution_dir
    if not source.is_dir():
        raise SystemExit(f"no lab folder at {source}")
    return plugin_graded_copy(lab, source, Path(workdir) / "graded")


def with_latency(rule_names: list[str], latency_ms: int) -> list[dict]:
    """The course's own rules, same replies, answered `latency_ms` later: a kill can then land
    while a call is in flight (the ledger records the request on arrival, before the wait)."""
    book = RuleBook.from_file(course.COURSE_TOML)
    found = {rule.name: rule for rule in book.rules}
    missing = [name for name in rule_names if name not in found]
    if missing:
        raise SystemExit(f"course.toml has no LLM rule named {', '.join(missing)}")
    return [found[name].model_copy(update={"latency_ms": latency_ms}).model_dump(exclude_defaults=True)
            for name in rule_names]


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: ")


def last_exception(log: str) -> str:
    """The exception line of a traceback (psycopg's UniqueViolation included, which student_error misses);
    else the log's last line (a sys.exit("message") prints only the message, e.g. Lab 04's `approve`)."""
    lines = [line for line in log.splitlines() if EXCEPTION_LINE.match(line) and not line.startswith(("DETAIL", "HINT"))]
    if found := student_error(log) or (lines[-1] if lines else None):
        return found
    tail = [line for line in log.splitlines() if line.strip()]
    return f"no exception; its log ends {tail[-1][:200]!r}" if tail else "no error in its log (empty)"
