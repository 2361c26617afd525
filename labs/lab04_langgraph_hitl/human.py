"""The human's side: deliver a review decision to a paused thread, from a new process.

Nothing is shared with the process that ran the graph except the checkpointer: the
thread id names the paused run, and LangGraph loads it from the database.
"""

from __future__ import annotations

from langgraph.types import Command  # noqa: F401

from .graph import Pause


def approve(app, config: dict, summary: str | None = None, pause: Pause = "before") -> dict:
    """Approve the paused thread's summary (replaced by `summary` when one is given) and let it finish.

    Returns the thread's final state values.
    """
    # TODO(lab04): two cases.
    # pause == "before": the graph stopped *before* review, so review cannot be told anything. Put an
    #   edit into the state first (app.update_state), then continue the thread with no new input.
    # pause == "interrupt": the graph stopped *inside* review, at interrupt(). The decision,
    #   {"action": "approve", "summary": summary}, must become interrupt()'s return value: resume with
    #   Command(resume=...).
    # Never pass the original question again: any input starts the thread over.
    raise NotImplementedError("TODO(lab04): approve")
