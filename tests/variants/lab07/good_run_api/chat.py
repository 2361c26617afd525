"""ChatSession with the older ctx.run(name, action, args=...) API and the state saved after each step."""

import restate

from . import llm, tools
from .models import CONVERSATION, MAX_TURNS, SERVICE, user_message

chat_session = restate.VirtualObject(SERVICE)


@chat_session.handler()
async def ask(ctx: restate.ObjectContext, question: str) -> str:
    conversation = (await ctx.get(CONVERSATION, type_hint=list[dict])) or []
    conversation = conversation + [user_message(question)]
    answer = ""
    for step in range(MAX_TURNS):
        reply = await ctx.run(f"ask model #{step}", llm.complete, args=(list(conversation),), type_hint=dict)
        conversation = conversation + [reply]
        if "tool_calls" not in reply:
            answer = reply.get("content", "")
            break
        for index, call in enumerate(reply["tool_calls"]):
            output = await ctx.run(f"run tool #{step}.{index}", tools.run_tool,
                                   args=(call, f"{ctx.request().id}-{step}-{index}"), type_hint=str)
            conversation = conversation + [tools.result_message(call, output)]
        ctx.set(CONVERSATION, conversation)  # saved as it goes; a retry replays these entries too
    ctx.set(CONVERSATION, conversation)
    return answer


@chat_session.handler(kind="shared")
async def history(ctx: restate.ObjectSharedContext) -> list[dict]:
    return (await ctx.get(CONVERSATION, type_hint=list[dict])) or []
