"""Time travel on a thread: its history, a replay from a past checkpoint, and a fork of it.

A checkpoint is named by (thread_id, checkpoint_id). Passing a config that holds a
checkpoint_id makes LangGraph start from *that* checkpoint instead of the thread's latest.
Neither a replay nor a fork changes any existing checkpoint: both add new ones, whose
parent chain leads back to the checkpoint they started from (a new branch of the tree).
"""

from __future__ import annotations

from langchain_core.messages import HumanMessage  # noqa: F401


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
    # TODO(lab04): invoke the graph with no input, from the checkpoint `checkpoint_id` of `thread`.
    raise NotImplementedError("TODO(lab04): replay")


def fork(app, thread: str, checkpoint_id: str, query: str) -> dict:
    """Branch from a past checkpoint with a different question, and run the branch to the pause."""
    # TODO(lab04): 1. read the state at that checkpoint (app.get_state) and find the question (the last
    #                 human message);
    #              2. app.update_state(<that checkpoint's config>, {"messages": [HumanMessage(...)]}):
    #                 a message with the SAME id replaces the question, a new id would append one;
    #                 update_state returns the config of the new checkpoint (the fork);
    #              3. run the new branch from that config with no input, to the pause.
    raise NotImplementedError("TODO(lab04): fork")
