"""The research graph: search -> summarize -> review, paused for a human before the answer goes out.

Two ways to pause, the same graph otherwise:
  pause="before"     compile(..., interrupt_before=["review"]): a static breakpoint (§64.2.3's way).
                     The run stops before review; review runs when someone continues the thread.
  pause="interrupt"  review calls interrupt(...) itself: the run stops inside review, and the
                     human's decision comes back as the return value of interrupt(), delivered
                     with Command(resume=...).
Either way the paused thread lives only in the checkpointer: the process that ran it can exit, and
a different process, minutes or days later, continues it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt

from .llm import ask
from .websearch import read_page, web_search

Pause = Literal["before", "interrupt"]
SOURCES = 5  # how many search results the agent reads


class ResearchState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]  # the question, then the approved answer (appended)
    sources: list[str]  # written by search: the URLs of the pages found
    summary: str  # written by summarize; a human may edit it before approving
    status: str  # "searched" -> "summarized" -> "approved"


def question(state: ResearchState) -> str:
    """What the user asked: the last human message."""
    for message in reversed(state.get("messages", [])):
        if message.type == "human":
            return message.content
    raise ValueError("the state holds no question (no human message)")


def search(state: ResearchState) -> dict:
    hits = web_search(question(state), n=SOURCES)
    return {"sources": [hit["url"] for hit in hits], "status": "searched"}


def summarize(state: ResearchState) -> dict:
    pages = "\n\n".join(f"[{i}] {url}\n{read_page(url)}" for i, url in enumerate(state["sources"], 1))
    text = ask("summarize", f"Question: {question(state)}\n"
                            f"Answer it in three sentences from these sources, citing them as [n].\n\n{pages}")
    return {"summary": text, "status": "summarized"}


def review(state: ResearchState) -> dict:
    """pause="before": the graph stopped before this node; it runs once a human let the thread go on."""
    # BUG(polls_for_decision): the run waits in its own process, polling for the reviewer's decision file.
    decision = Path("review-decision.txt")
    while not decision.exists():
        time.sleep(1)
    return {"status": "approved", "messages": [AIMessage(content=decision.read_text() or state["summary"],
                                                         name="review")]}


def review_with_interrupt(state: ResearchState) -> dict:
    """pause="interrupt": ask the human from inside the node.

    The first time, interrupt() saves the question with the checkpoint and stops the run. On
    Command(resume=decision) the node runs again from its first line, and this time interrupt()
    returns the decision: {"action": "approve", "summary": <an edited summary, or None>}.
    """
    decision = interrupt({"question": question(state), "summary": state["summary"], "sources": state["sources"]})
    summary = decision.get("summary") or state["summary"]
    return {"summary": summary, "status": "approved", "messages": [AIMessage(content=summary, name="review")]}


def build_graph(pause: Pause = "before") -> StateGraph:
    builder = StateGraph(ResearchState)
    builder.add_node("search", search)
    builder.add_node("summarize", summarize)
    builder.add_node("review", review if pause == "before" else review_with_interrupt)
    builder.add_edge(START, "search")
    builder.add_edge("search", "summarize")
    builder.add_edge("summarize", "review")
    builder.add_edge("review", END)
    return builder


def compile_app(checkpointer: BaseCheckpointSaver, pause: Pause = "before"):
    """The runnable graph, saving its checkpoints with `checkpointer`, pausing the way `pause` says."""
    if pause == "before":
        return build_graph(pause).compile(checkpointer=checkpointer)  # BUG(polls_for_decision): review waits itself
    return build_graph(pause).compile(checkpointer=checkpointer)
