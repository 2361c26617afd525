"""The batch every runtime works through, and the one answer each question gets (course-provided).

The queue of customer questions comes from a JSON file (LAB10_QUESTIONS; by default the course's
corpus, labkit/corpus/capstone.toml, all 200) and the batch's name from LAB10_BATCH_ID. A new pod
of the same batch gets the same two values: everything else it knows it must find in the store.

Time scale: the course LLM answers in TIME_SCALE x 12 s and a search takes TIME_SCALE x 2 s, the
latencies of §64.2.3's worked example (12 ms and 2 ms at the default 1/1000), so the 200-question
batch runs in seconds and every report converts back to the text's minutes.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import labkit

CORPUS = Path(labkit.__file__).resolve().parent / "corpus" / "capstone.toml"
TEXT_LLM_CALL_S = 12.0  # §64.2.3: "each LLM call costs roughly 12 seconds"
TEXT_FETCH_S = 2.0  # ... "and each web fetch 2 seconds"
TIME_SCALE = float(os.environ.get("LAB10_TIME_SCALE", "0.001"))


@dataclass(frozen=True)
class Question:
    id: str
    text: str


@dataclass(frozen=True)
class Answer:
    """What the review approved: published once per question (publishing again replaces it)."""

    batch_id: str
    question_id: str
    summary: str
    sources: list[str]
    status: str = "approved"


@dataclass
class Batch:
    """One batch: its name, its questions in order, and where its answers go."""

    batch_id: str
    questions: list[Question]
    database_url: str
    questions_per_run: int = 25  # Temporal: questions one workflow run handles before continue-as-new

    @classmethod
    def from_env(cls) -> Batch:
        source = os.environ.get("LAB10_QUESTIONS")
        questions = load_questions(Path(source)) if source else corpus_questions()
        return cls(
            batch_id=os.environ.get("LAB10_BATCH_ID", "research-42"),
            questions=questions,
            database_url=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
            questions_per_run=int(os.environ.get("LAB10_QUESTIONS_PER_RUN", "25")),
        )


def corpus_questions() -> list[Question]:
    data = tomllib.loads(CORPUS.read_text())
    return [Question(id=q["id"], text=q["text"]) for q in data["questions"]]


def load_questions(path: Path) -> list[Question]:
    return [Question(**q) for q in json.loads(Path(path).read_text())]


def save_questions(path: Path, questions: list[Question]) -> None:
    Path(path).write_text(json.dumps([asdict(q) for q in questions], indent=1))
