"""The baseline: the batch as a plain loop, with no durability at all (course-provided).

It keeps its place in a local variable, so a pod that is evicted takes its progress with it and
the next pod starts again at question 1: every search and every LLM call already made is made
again. The capstone measures the other runtimes against this.
"""

from __future__ import annotations

from . import steps
from .models import Answer, Batch


def run_batch(batch: Batch) -> None:
    for question in batch.questions:
        sources = steps.search(question)
        summary = steps.summarize(question, sources)
        status = steps.review(question, summary)
        steps.publish(Answer(batch.batch_id, question.id, summary, sources, status), batch.database_url)
