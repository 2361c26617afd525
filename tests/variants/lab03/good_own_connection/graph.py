"""The same three-node line, shaped differently: nodes are methods, wired with add_sequence."""

from __future__ import annotations

from typing import TypedDict

from langgraph.graph import StateGraph

from .llm import ask

DURABILITY = "sync"


class ReportState(TypedDict, total=False):
    topic: str
    notes: str
    summary: str
    report: str


class Pipeline:
    """One object per graph; each method is a node named after it."""

    def __init__(self, style: str = "plain"):
        self.style = style

    def fetch(self, state: ReportState) -> dict:
        return {"notes": ask("fetch", f"Facts about {state['topic']} ({self.style})")}

    def transform(self, state: ReportState) -> dict:
        return {"summary": ask("transform", f"Shorten: {state['notes']}")}

    def report(self, state: ReportState) -> dict:
        return {"report": ask("report", f"Report on {state['topic']}: {state['summary']}")}


def build_graph() -> StateGraph:
    pipeline = Pipeline()
    builder = StateGraph(ReportState)
    builder.add_sequence([("fetch", pipeline.fetch), ("transform", pipeline.transform),
                          ("report", pipeline.report)])
    builder.set_entry_point("fetch")
    builder.set_finish_point("report")
    return builder


def compile_app(checkpointer):
    return build_graph().compile(checkpointer=checkpointer)
