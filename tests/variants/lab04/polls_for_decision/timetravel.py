"""Time travel on a thread: its history, a replay from a past checkpoint, and a fork of it.

A checkpoint is named by (thread_id, checkpoint_id). Passing a config that holds a
checkpoint_id makes LangGraph start from *that* checkpoint instead of the thread's latest.
Neither a replay nor a fork changes any existing checkpoint: both add new ones, whose
parent chain leads back to the checkpoint they started from (a new branch of the tree).
"""

from __future__ import annotations

from langchain_core.messages import HumanMessage


def thread_config(thread: str, checkpoint_id: str | None = None) -> dict:
    configurable = {"thread_id": thread}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def history(app, thread: str) -> list:
    """Every checkpoint of the thread, every branch, oldest first (StateSnapshots)."""
    return list(app.get_state_history(thread_config(thread)))[::-1]


def replay(app, thread: str, checkpoint_id: str) -> dict:
    """Run the thread again from a past checkpoint, with no new input.

    Everything after that checkpoint executes again (summarize calls the LLM again) and is saved
    as a new branch; the run stops where the graph pauses, as the first run did.
    """
    return app.invoke(None, thread_config(thread, checkpoint_id))


def fork(app, thread: str, checkpoint_id: str, query: str) -> dict:
    """Branch from a past checkpoint with a different question, and run the branch to the pause.

    update_state writes a new checkpoint (source "update") whose parent is the past one; the
    message carries the id of the question it replaces (add_messages replaces a message with the
    same id, and appends one with a new id). Running from the config it returns continues the new
    branch.
    """
    past = app.get_state(thread_config(thread, checkpoint_id))
    asked = next(m for m in reversed(past.values["messages"]) if m.type == "human")
    branch = app.update_state(past.config, {"messages": [HumanMessage(content=query, id=asked.id)]})
    return app.invoke(None, branch)
