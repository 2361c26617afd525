"""ChatSession: one durable chat per session id, as a Restate virtual object.

`ask` runs a small agent loop: the model, the tool it asks for, the model again. Each of those
steps must go through ctx.run, so Restate journals its result: after a crash, the retried
invocation replays the finished steps from the journal and runs only the rest. The conversation
lives in the object's state (ctx.get / ctx.set), which Restate stores and hands to whichever
process serves the next call. `history` is a shared handler: it reads while an ask runs.
"""

import restate

from . import llm, tools
from .models import CONVERSATION, MAX_TURNS, SERVICE, user_message

chat_session = restate.VirtualObject(SERVICE)

# Restate retries a failed step itself; a few attempts, then the ask fails with the reason.
STEP = restate.RunOptions(max_attempts=5)


@chat_session.handler()
async def ask(ctx: restate.ObjectContext, question: str) -> str:
    # TODO(lab07): read the conversation from the object's state, append user_message(question),
    # then loop (at most MAX_TURNS): call llm.complete inside ctx.run_typed, append its message; if it
    # has tool_calls, run each with tools.run_tool inside ctx.run_typed (key: invocation id + call id)
    # and append tools.result_message(call, output); otherwise stop. Store the conversation with
    # ctx.set and return the last message's content.
    raise NotImplementedError("TODO(lab07): ask — the journaled agent loop and the conversation in state")


@chat_session.handler(kind="shared")
async def history(ctx: restate.ObjectSharedContext) -> list[dict]:
    """The session's conversation as stored: readable while an ask runs, never changed here."""
    # TODO(lab07): return the stored conversation (an empty list for a new session).
    raise NotImplementedError("TODO(lab07): history — read the stored conversation")
