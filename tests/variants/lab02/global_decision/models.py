"""Data shared by the workflow, the activities, the starter and the approve command.

Kept in its own module on purpose: the workflow module imports it under
``workflow.unsafe.imports_passed_through()`` so the Temporal sandbox does not
re-import the SQLModel table (which would fail with "Table 'analysis' is
already defined").

The names and strings below are the lab's contract with the checks and with
``lab approve``: the signals ``approve`` / ``reject``, the update ``decide``, the
query ``status``, and the stage and status strings.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field
from sqlmodel import Field as Column
from sqlmodel import SQLModel, create_engine

TASK_QUEUE = os.environ.get("TEMPORAL_TASK_QUEUE", "lab02-approval")

DEFAULT_APPROVAL_TIMEOUT_S = 24 * 60 * 60  # a day: humans are slow

# The stages the `status` query reports, in the order a run goes through them.
ANALYZING = "analyzing"  # call_llm and parse_json
AWAITING_APPROVAL = "awaiting_approval"  # parked at the gate; `row` is what the reviewer approves
SAVING = "saving"  # approved: save_to_db is running
DONE = "done"  # saved
REJECTED = "rejected"  # a reviewer said no: nothing saved
EXPIRED = "expired"  # nobody decided in time: nothing saved

# The decisions a reviewer can send (`decide` update); the signals have the same names.
APPROVE = "approve"
REJECT = "reject"
DECISIONS = (APPROVE, REJECT)

# AnalyzeResult.status
APPROVED = "approved"


@dataclass
class AnalyzeRequest:
    """Workflow input: the prompt, and how long a reviewer has to decide."""

    prompt: str
    approval_timeout_seconds: float = DEFAULT_APPROVAL_TIMEOUT_S


@dataclass
class AnalyzeResult:
    """Workflow result. row_id is None unless the analysis was approved and saved."""

    status: str  # APPROVED | REJECTED | EXPIRED
    row_id: int | None
    reviewer: str | None
    note: str = ""  # the reviewer's comment (approve) or reason (reject)


@dataclass
class ApprovalStatus:
    """What the `status` query answers: where the run is, and what is up for approval."""

    stage: str
    row: dict | None = None  # the parsed analysis, once parse_json has run
    reviewer: str | None = None
    note: str = ""


@dataclass
class DecisionAck:
    """What the `decide` update returns to the caller once the decision is accepted."""

    workflow_id: str
    decision: str
    reviewer: str
    accepted_at: str  # workflow time, ISO 8601


class Analysis(BaseModel):
    """What parse_json accepts from the LLM: anything else is a validation error."""

    sentiment: str = Field(pattern="^(positive|neutral|negative)$")
    summary: str = Field(min_length=1)
    topics: list[str] = []


class AnalysisRow(SQLModel, table=True):
    """One saved analysis. workflow_id is unique: a retried save cannot add a second row."""

    __tablename__ = "analysis"

    id: int | None = Column(default=None, primary_key=True)
    workflow_id: str = Column(unique=True, index=True)
    sentiment: str
    summary: str
    topics: str  # comma-separated; SQLite has no list type


def database_url() -> str:
    """SQLite location from LAB02_DATABASE_URL, default .lab/lab02.sqlite under the working directory."""
    url = os.environ.get("LAB02_DATABASE_URL")
    if url:
        return url
    path = Path(".lab") / "lab02.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_engine():
    engine = create_engine(database_url())
    SQLModel.metadata.create_all(engine)
    return engine
