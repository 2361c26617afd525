"""One helper every node uses to call the LLM (course-provided; you do not need to edit it).

The prompt is tagged with the node's name, so the course LLM's ledger can tell
which node made each call: that is how the checks count node executions across
processes. The client reads OPENAI_BASE_URL and OPENAI_API_KEY from the
environment and never retries on its own (max_retries=0): one call is one
request in the ledger.
"""

import functools
import os

from openai import OpenAI


@functools.cache
def client() -> OpenAI:
    return OpenAI(max_retries=0, timeout=30)


def ask(node: str, text: str) -> str:
    """Send `text` to the LLM on behalf of `node`; return the reply text."""
    reply = client().chat.completions.create(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        messages=[
            {"role": "system", "content": "You are one step of a small report pipeline. Be brief."},
            {"role": "user", "content": f"[lab03 node={node}] {text}"},
        ],
    )
    return reply.choices[0].message.content or ""
