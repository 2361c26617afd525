"""Data shared by the workflow, the activities and the starter.

Kept in its own module on purpose: the workflow module imports it under
``workflow.unsafe.imports_passed_through()`` so the Temporal sandbox does not
re-import the SQLModel table (which would fail with "Table 'analysis' is
already defined").
"""

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field
from sqlmodel import Field as Column
from sqlmodel import SQLModel, create_engine

TASK_QUEUE = os.environ.get("TEMPORAL_TASK_QUEUE", "lab01-analyze")


@dataclass
class AnalyzeRequest:
    """Workflow input: the prompt sent to the LLM."""

    prompt: str


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
    """SQLite location from LAB01_DATABASE_URL, default .lab/lab01.sqlite under the working directory."""
    url = os.environ.get("LAB01_DATABASE_URL")
    if url:
        return url
    path = Path(".lab") / "lab01.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_engine():
    engine = create_engine(database_url())
    SQLModel.metadata.create_all(engine)
    return engine
