"""The agent's tool: post a message to the team chat (the course's notification sink).

The post is a side effect someone sees. Run inside ctx.run it happens at least once: a service
killed after the chat got the message, before Restate journaled the result, posts it again on
the retry. So it carries an idempotency key that is the same on every attempt of the same tool
call, and the chat delivers a key only once.
"""

import json

import httpx

from .models import notify_token, notify_url, tool_timeout_s


async def post_message(channel: str, text: str, idempotency_key: str) -> str:
    async with httpx.AsyncClient(timeout=tool_timeout_s()) as client:
        response = await client.post(
            notify_url(), json={"channel": channel, "text": text},
            headers={"Authorization": f"Bearer {notify_token()}", "Idempotency-Key": idempotency_key})
    response.raise_for_status()
    return f"posted to {channel} (message {response.json()['id']})"


async def run_tool(call: dict, idempotency_key: str) -> str:
    """Carry out one tool call from the model's message; the text the model reads back."""
    name = call["function"]["name"]
    arguments = json.loads(call["function"].get("arguments") or "{}")
    if name == "post_message":
        return await post_message(arguments["channel"], arguments["text"], idempotency_key)
    return f"unknown tool {name!r}"


def result_message(call: dict, output: str) -> dict:
    """The tool's output as the message the model reads next."""
    return {"role": "tool", "tool_call_id": call["id"], "content": output}
