"""The steps of one question as Temporal activities (course-provided; you do not edit it).

Each wraps the step of the same name in steps.py. The OpenAI client never retries (max_retries=0):
a failed call fails the attempt, and the retry policy your workflow gives decides what happens.
"""

from __future__ import annotations

from temporalio import activity

from . import steps
from .models import Answer, Question


@activity.defn
def search_web(question: Question) -> list[str]:
    return steps.search(question)


@activity.defn
def summarize(question: Question, sources: list[str]) -> str:
    return steps.summarize(question, sources)


@activity.defn
def review(question: Question, summary: str) -> str:
    return steps.review(question, summary)


@activity.defn
def publish(answer: Answer, database_url: str) -> None:
    steps.publish(answer, database_url)


ACTIVITIES = [search_web, summarize, review, publish]
