"""One model call: the conversation so far in, the assistant's message out.

The message comes back as a plain dict, so Restate can journal it (ctx.run stores what the
function returns) and the conversation can be kept in the object's state.
"""

from openai import AsyncOpenAI

from .models import SYSTEM_PROMPT, TOOLS, model


async def complete(messages: list[dict]) -> dict:
    """Ask the model for its next turn: a reply, or tool calls."""
    # max_retries=0: a failed call fails the ctx.run attempt, and Restate retries it where it can be seen.
    # Async: a blocking call would stall every other session this process serves.
    async with AsyncOpenAI(max_retries=0) as client:
        response = await client.chat.completions.create(
            model=model(), messages=[{"role": "system", "content": SYSTEM_PROMPT}, *messages], tools=TOOLS)
    return response.choices[0].message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})
