"""The batch on LangGraph + PostgreSQL, one thread per question.

Each question is its own small run of search -> summarize -> review under the thread id
capstone-<batch>-<question>. The pod walks the queue and asks the checkpointer about each thread
first: finished threads are skipped, an interrupted one is continued with invoke(None, ...), and
only a thread with no checkpoint is started with its input.
"""

from __future__ import annotations

from typing import TypedDict

from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END, START, StateGraph

from . import steps
from .models import Answer, Batch, Question


class QuestionState(TypedDict):
    question_id: str
    text: str
    sources: list[str]
    summary: str
    status: str


def build_graph(batch: Batch) -> StateGraph:
    def question(state: QuestionState) -> Question:
        return Question(id=state["question_id"], text=state["text"])

    def search(state: QuestionState) -> dict:
        return {"sources": steps.search(question(state))}

    def summarize(state: QuestionState) -> dict:
        return {"summary": steps.summarize(question(state), state["sources"])}

    def review(state: QuestionState) -> dict:
        status = steps.review(question(state), state["summary"])
        steps.publish(Answer(batch.batch_id, state["question_id"], state["summary"], state["sources"], status),
                      batch.database_url)
        return {"status": status}

    graph = StateGraph(QuestionState)
    for name, node in (("search", search), ("summarize", summarize), ("review", review)):
        graph.add_node(name, node)
    graph.add_edge(START, "search")
    graph.add_edge("search", "summarize")
    graph.add_edge("summarize", "review")
    graph.add_edge("review", END)
    return graph


def run_batch(batch: Batch) -> None:
    with PostgresSaver.from_conn_string(batch.database_url) as saver:
        saver.setup()
        app = build_graph(batch).compile(checkpointer=saver)
        for q in batch.questions:
            config = {"configurable": {"thread_id": f"capstone-{batch.batch_id}-{q.id}"}}
            snapshot = app.get_state(config)
            if not snapshot.values:
                start = {"question_id": q.id, "text": q.text, "sources": [], "summary": "", "status": "new"}
                app.invoke(start, config, durability="sync")
            elif snapshot.next:
                app.invoke(None, config, durability="sync")
