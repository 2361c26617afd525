"""The graph: fetch -> transform -> report, each node one LLM call, with a typed state.

LangGraph saves a checkpoint of the whole state after every step (superstep)
into the checkpointer it is compiled with, keyed by the thread id in the config.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph

from .llm import ask

# When a checkpoint reaches the database:
#   "sync"  before the next step starts   (a crash keeps every finished step)
#   "async" in the background while the next step runs (the default; a hard crash can lose the last one)
#   "exit"  only when the run ends         (a hard crash keeps nothing)
DURABILITY: Literal["sync", "async", "exit"] = "sync"


class ReportState(TypedDict, total=False):
    topic: str    # the input
    notes: str    # written by fetch
    summary: str  # written by transform
    report: str   # written by report


def fetch(state: ReportState) -> ReportState:
    return {"notes": ask("fetch", f"Gather three short facts about: {state['topic']}")}


def transform(state: ReportState) -> ReportState:
    return {"summary": ask("transform", f"Condense these notes into two sentences:\n{state['notes']}")}


def report(state: ReportState) -> ReportState:
    text = ask("report", f"Write a three-line report titled {state['topic']!r} from:\n{state['summary']}")
    return {"report": text}


def build_graph() -> StateGraph:
    builder = StateGraph(ReportState)
    builder.add_node("fetch", fetch)
    builder.add_node("transform", transform)
    builder.add_node("report", report)
    builder.add_edge(START, "fetch")
    builder.add_edge("fetch", "transform")
    builder.add_edge("transform", "report")
    builder.add_edge("report", END)
    return builder


def compile_app(checkpointer: BaseCheckpointSaver):
    """The runnable graph, saving its checkpoints with `checkpointer`."""
    return build_graph().compile(checkpointer=checkpointer)
