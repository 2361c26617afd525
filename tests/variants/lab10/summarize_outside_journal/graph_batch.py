"""The batch on LangGraph + PostgreSQL: one thread for the whole batch, as §64.2.3 tells it.

search -> summarize -> review is the text's graph; review loops back to search while questions
remain, and the state carries a cursor (the index of the question being answered), never the
answers themselves (they are published as they are approved). Every node's checkpoint reaches
PostgreSQL before the next node starts (durability="sync"), so an evicted pod's successor finds
the thread by its id, reads the latest checkpoint with one query (get_state) and continues with
invoke(None, ...): the questions already answered are not asked again.
"""

from __future__ import annotations

from typing import TypedDict

from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END, START, StateGraph

from . import steps
from .models import Answer, Batch

DURABILITY = "sync"  # a SIGKILL keeps every finished node (the default "async" can lose the last one)


class BatchState(TypedDict):
    cursor: int  # the index of the question being answered
    sources: list[str]
    summary: str
    status: str


def thread_config(batch: Batch) -> dict:
    # The thread is the batch: every pod of this batch, on any host, finds the same one.
    # Three steps per question: a limit sized to the batch stops a loop that never ends.
    return {"configurable": {"thread_id": f"capstone-{batch.batch_id}"},
            "recursion_limit": 3 * len(batch.questions) + 10}


def build_graph(batch: Batch) -> StateGraph:
    def search(state: BatchState) -> dict:
        return {"sources": steps.search(batch.questions[state["cursor"]]), "status": "searched"}

    def summarize(state: BatchState) -> dict:
        question = batch.questions[state["cursor"]]
        return {"summary": steps.summarize(question, state["sources"]), "status": "summarized"}

    def review(state: BatchState) -> dict:
        question = batch.questions[state["cursor"]]
        status = steps.review(question, state["summary"])
        steps.publish(Answer(batch.batch_id, question.id, state["summary"], state["sources"], status),
                      batch.database_url)
        return {"cursor": state["cursor"] + 1, "status": status}

    def next_step(state: BatchState) -> str:
        return "search" if state["cursor"] < len(batch.questions) else END

    graph = StateGraph(BatchState)
    graph.add_node("search", search)
    graph.add_node("summarize", summarize)
    graph.add_node("review", review)
    graph.add_edge(START, "search")
    graph.add_edge("search", "summarize")
    graph.add_edge("summarize", "review")
    graph.add_conditional_edges("review", next_step, ["search", END])
    return graph


def run_batch(batch: Batch) -> None:
    config = thread_config(batch)
    with PostgresSaver.from_conn_string(batch.database_url) as saver:
        saver.setup()
        app = build_graph(batch).compile(checkpointer=saver)
        snapshot = app.get_state(config)  # the one SELECT a new pod needs
        if not snapshot.values:
            app.invoke({"cursor": 0, "sources": [], "summary": "", "status": "new"}, config, durability=DURABILITY)
        elif snapshot.next:
            app.invoke(None, config, durability=DURABILITY)  # None: continue from the latest checkpoint
        # else: the thread has finished; there is nothing left to do
