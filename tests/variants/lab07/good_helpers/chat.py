"""ChatSession with the loop split into helpers, and a while loop bounded by MAX_TURNS."""

import restate

from . import llm, tools
from .models import CONVERSATION, MAX_TURNS, SERVICE, user_message

chat_session = restate.VirtualObject(SERVICE)


async def model_turn(ctx: restate.ObjectContext, number: int, messages: list[dict]) -> dict:
    options: restate.RunOptions = restate.RunOptions(max_attempts=3, type_hint=dict)
    return await ctx.run_typed(f"model-turn-{number}", llm.complete, options, messages)


async def use_tools(ctx: restate.ObjectContext, message: dict) -> list[dict]:
    results = []
    for call in message.get("tool_calls", []):
        key = ctx.request().id + ":" + call["id"]
        output = await ctx.run_typed(f"tool-{call['id']}", tools.run_tool, restate.RunOptions(max_attempts=3), call, key)
        results.append(tools.result_message(call, output))
    return results


@chat_session.handler()
async def ask(ctx: restate.ObjectContext, question: str) -> str:
    stored = await ctx.get(CONVERSATION, type_hint=list[dict])
    messages = list(stored or []) + [user_message(question)]
    turn, message = 0, {}
    while turn < MAX_TURNS:
        turn += 1
        message = await model_turn(ctx, turn, list(messages))
        messages.append(message)
        if not message.get("tool_calls"):
            break
        messages.extend(await use_tools(ctx, message))
    ctx.set(CONVERSATION, messages)
    return message.get("content") or ""


@chat_session.handler(kind="shared")
async def history(ctx: restate.ObjectSharedContext) -> list[dict]:
    found = await ctx.get(CONVERSATION, type_hint=list[dict])
    return found if found is not None else []
