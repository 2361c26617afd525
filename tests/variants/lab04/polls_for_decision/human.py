"""The human's side: deliver a review decision to a paused thread, from a new process.

Nothing is shared with the process that ran the graph except the checkpointer: the
thread id names the paused run, and LangGraph loads it from the database.
"""

from __future__ import annotations

from langgraph.types import Command

from .graph import Pause


def approve(app, config: dict, summary: str | None = None, pause: Pause = "before") -> dict:
    """Approve the paused thread's summary (replaced by `summary` when one is given) and let it finish.

    Returns the thread's final state values.
    """
    if pause == "before":
        # The graph stopped *before* review, so review cannot be told anything: an edit goes into
        # the state first (a checkpoint of its own, source "update"), then None continues the thread.
        if summary is not None:
            app.update_state(config, {"summary": summary})
        return app.invoke(None, config)
    # The graph stopped *inside* review, at interrupt(): the decision becomes interrupt()'s return value.
    return app.invoke(Command(resume={"action": "approve", "summary": summary}), config)
