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
    # Another shape: the edit travels with the continuation, as Command(update=...): no update
    # checkpoint, the write is attached to the paused checkpoint (5 checkpoints in the end, not 6).
    if pause == "before":
        resume = Command(update={"summary": summary}) if summary is not None else None
    else:
        resume = Command(resume={"action": "approve", "summary": summary})
    for _ in app.stream(resume, config):
        pass
    return app.get_state(config).values
