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

from typing import Annotated, Literal, TypedDict  # noqa: F401  (Annotated: for the messages key)

from langchain_core.messages import AIMessage, AnyMessage  # noqa: F401
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph  # noqa: F401
from langgraph.graph.message import add_messages  # noqa: F401
from langgraph.types import interrupt  # noqa: F401

from .llm import ask  # noqa: F401
from .websearch import read_page, web_search  # noqa: F401

Pause = Literal["before", "interrupt"]
SOURCES = 5  # how many search results the agent reads


class ResearchState(TypedDict, total=False):
    # TODO(lab04): the state of §64.2.3's research graph, four keys:
    #   messages  the conversation, with the add_messages reducer (Annotated[list[AnyMessage], add_messages]),
    #             so that the messages a node returns are appended, not written over;
    #   sources   list[str], the URLs search found;
    #   summary   str, what summarize wrote (a human may edit it);
    #   status    str: "searched" -> "summarized" -> "approved".
    pass


def question(state: ResearchState) -> str:
    """What the user asked: the last human message."""
    for message in reversed(state.get("messages", [])):
        if message.type == "human":
            return message.content
    raise ValueError("the state holds no question (no human message)")


def search(state: ResearchState) -> dict:
    # TODO(lab04): web_search(question(state), n=SOURCES) returns [{"url", "title", "snippet"}, ...];
    # return only what this node writes: the URLs as "sources", and status "searched".
    raise NotImplementedError("TODO(lab04): search")


def summarize(state: ResearchState) -> dict:
    # TODO(lab04): read each source (read_page(url)), then make exactly ONE call,
    # ask("summarize", ...), whose prompt includes the question (question(state)) and the pages.
    # Return {"summary": <the reply>, "status": "summarized"}.
    raise NotImplementedError("TODO(lab04): summarize")


def review(state: ResearchState) -> dict:
    """pause="before": the graph stopped before this node; it runs once a human let the thread go on."""
    # TODO(lab04): the human has approved state["summary"] (edited or not) by the time this runs.
    # Mark the thread "approved" and append the answer to the conversation:
    # {"status": ..., "messages": [AIMessage(content=<the summary>)]}.
    raise NotImplementedError("TODO(lab04): review")


def review_with_interrupt(state: ResearchState) -> dict:
    """pause="interrupt": ask the human from inside the node.

    The first time, interrupt() saves the question with the checkpoint and stops the run. On
    Command(resume=decision) the node runs again from its first line, and this time interrupt()
    returns the decision: {"action": "approve", "summary": <an edited summary, or None>}.
    """
    # TODO(lab04): decision = interrupt({... what the human needs to see: the question, the summary,
    # the sources ...}). Then use decision["summary"] if it is set, else state["summary"], and return
    # the same update as review(), with that summary also written to "summary".
    raise NotImplementedError("TODO(lab04): review_with_interrupt")


def build_graph(pause: Pause = "before") -> StateGraph:
    # TODO(lab04): a StateGraph(ResearchState) with nodes "search", "summarize" and "review", wired
    # START -> search -> summarize -> review -> END. The node named "review" is `review` when
    # pause == "before", and `review_with_interrupt` when pause == "interrupt".
    raise NotImplementedError("TODO(lab04): build_graph")


def compile_app(checkpointer: BaseCheckpointSaver, pause: Pause = "before"):
    """The runnable graph, saving its checkpoints with `checkpointer`, pausing the way `pause` says."""
    # TODO(lab04): compile build_graph(pause) with the checkpointer. With pause == "before" the run
    # must stop before review (§64.2.3's static breakpoint); with "interrupt", review pauses itself.
    raise NotImplementedError("TODO(lab04): compile_app")
