"""Verdicts that teach: what was observed, what was expected, and which idea to revisit."""

from __future__ import annotations

import textwrap
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


def student_error(log: str) -> str | None:
    """The last exception line of a Python traceback in a log, if any ("SyntaxError: ...")."""
    found = None
    for line in log.splitlines():
        stripped = line.strip()
        head = stripped.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
            found = stripped
    return found


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
