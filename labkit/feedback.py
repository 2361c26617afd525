"""Verdicts that teach: what was observed, what was expected, and which idea to revisit."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from dataclasses import dataclass, field


@dataclass
class CheckFailed(Exception):
    """Raised by a check. Rendered for the student instead of a traceback."""

    summary: str
    observed: str = ""
    expected: str = ""
    revisit: str = ""
    details: str = ""  # e.g. the tail of the student's worker log
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.summary)

    def render(self) -> str:
        lines = [self.summary]
        for label, text in (("observed", self.observed), ("expected", self.expected),
                            ("revisit", self.revisit)):
            if text:
                body = textwrap.indent(textwrap.dedent(text).strip(), " " * 12).lstrip()
                lines.append(f"  {label + ':':<9} {body}")
        if self.details:
            lines.append("  details:")
            lines.append(textwrap.indent(self.details.rstrip(), "  | "))
        return "\n".join(lines)


class NotChecked(CheckFailed):
    """A check that could not run because the scenario it inspects failed earlier."""


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


TRACEBACK_HEAD = "Traceback (most recent call last):"
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(: .*)?$")  # "psycopg.errors.UndefinedTable: relation ..."
FRAME_LINE = re.compile(r'^\s*File "([^"]+)", line (\d+)')
# Raised before any of the module ran: the traceback's last frame is the file and line that did not parse.
PARSE_ERRORS = ("SyntaxError", "IndentationError", "TabError")
# Words that, in the exception line, mean a client could not reach its server (not merely that the
# word "connection" appears somewhere in a log: a file path, a variable, a hint).
UNREACHABLE = ("connection refused", "could not connect", "connection failed", "connecterror",
               "apiconnectionerror", "name or service not known", "no route to host", "connection reset",
               "server closed the connection", "connection timed out", "connecttimeout")


def student_error(log: str) -> str | None:
    """The last exception of a Python traceback in a log, if any ("SyntaxError: ... (activities.py:42)",
    "psycopg.errors.ActiveSqlTransaction: ..."): the first unindented line after a traceback's
    frames, whatever the exception's name ends with; a file that did not parse is named with its
    line. A log with no traceback: its last line whose first word names an error ("FooError: ...", "...Exception", "...Exit", "...Interrupt")."""
    found = None
    in_traceback = False
    frame = None  # (file, line) of the traceback's last frame
    for line in log.splitlines():
        if line.startswith(TRACEBACK_HEAD):
            in_traceback, frame = True, None
            continue
        if in_traceback:
            if not line.strip() or line[:1] in (" ", "\t"):
                where = FRAME_LINE.match(line)
                if where:
                    frame = (where.group(1), int(where.group(2)))
                continue  # a frame, its source line, or a caret line
            in_traceback = False
            if EXCEPTION_LINE.match(line.rstrip()):
                found = line.strip()
                if frame and found.split(":", 1)[0].rsplit(".", 1)[-1] in PARSE_ERRORS:
                    found += f" ({Path(frame[0]).name}:{frame[1]})"  # where Python stopped reading
            continue
        stripped = line.strip()
        head = stripped.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
            found = stripped
    return found


def parse_error(log: str) -> str | None:
    """The student_error() of a log whose last exception says a file did not parse, else None."""
    error = student_error(log)
    return error if error and error.split(":", 1)[0].rsplit(".", 1)[-1] in PARSE_ERRORS else None


def unreachable(log: str) -> str | None:
    """The student process's last exception, when it says a server could not be reached (connection
    refused, a host that does not resolve, ...); None for any other error."""
    error = student_error(log)
    if error and any(word in error.lower() for word in UNREACHABLE):
        return error
    return None


def unfinished(message: str, lab: str) -> CheckFailed | None:
    """A starter's NotImplementedError("TODO(labNN): ...") reached the check: say so plainly."""
    marker = f"TODO(lab{lab})"
    if marker not in message:
        return None
    what = message[message.index(marker):].splitlines()[0]
    return CheckFailed(
        f"Not implemented yet: {what}",
        observed="the starter's NotImplementedError was raised",
        expected="your implementation in place of the TODO",
        revisit=f"Work through the {marker} markers in the lab folder; `lab hint {lab}` gives a hint at a time.")
