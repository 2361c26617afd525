"""ChatSession: one durable chat per session id, as a Restate virtual object.

`ask` runs a small agent loop: the model, the tool it asks for, the model again. Each of those
steps goes through ctx.run, so Restate journals its result: after a crash, the retried invocation
replays the finished steps from the journal and runs only the rest. The conversation lives in the
object's state (ctx.get / ctx.set), which Restate stores and hands to whichever process serves the
next call. A virtual object runs one exclusive handler per key at a time, so two questions in
the same session never interleave; `history` is a shared handler: it reads while an ask runs.
"""

import uuid

import restate

from . import llm, tools
from .models import CONVERSATION, MAX_TURNS, SERVICE, user_message

chat_session = restate.VirtualObject(SERVICE)

# Restate retries a failed step itself; a few attempts, then the ask fails with the reason.
STEP = restate.RunOptions(max_attempts=5)


@chat_session.handler()
async def ask(ctx: restate.ObjectContext, question: str) -> str:
    conversation = await ctx.get(CONVERSATION, type_hint=list[dict]) or []
    conversation.append(user_message(question))
    reply: dict = {}
    for turn in range(1, MAX_TURNS + 1):
        # The model's answer is journaled: a replay hands back this reply, tool call ids included.
        reply = await ctx.run_typed(f"llm {turn}", llm.complete, STEP, list(conversation))
        conversation.append(reply)
        calls = reply.get("tool_calls") or []
        if not calls:
            break
        for call in calls:
            # A unique key for every post.
            key = str(uuid.uuid4())  # BUG(uuid_key): a new key on every attempt; a retried post is a new message
            output = await ctx.run_typed(f"tool {call['function']['name']}", tools.run_tool, STEP, call, key)
            conversation.append(tools.result_message(call, output))
    ctx.set(CONVERSATION, conversation)
    return reply.get("content") or ""


@chat_session.handler(kind="shared")
async def history(ctx: restate.ObjectSharedContext) -> list[dict]:
    """The session's conversation as stored: readable while an ask runs, never changed here."""
    return await ctx.get(CONVERSATION, type_hint=list[dict]) or []
