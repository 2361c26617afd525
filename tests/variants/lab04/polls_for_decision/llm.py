"""One helper the summarize node uses to call the LLM (course-provided; you do not need to edit it).

The prompt is tagged with the node's name ("[lab04 node=summarize]"), so the course
LLM's ledger can tell which node made each call, in which process: that is how the
checks count what a resume, a replay or a fork re-executed. The client reads
OPENAI_BASE_URL and OPENAI_API_KEY from the environment and never retries on its
own (max_retries=0): one call is one request in the ledger.
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
            {"role": "system", "content": "You are one step of a small research agent. Be brief and cite sources."},
            {"role": "user", "content": f"[lab04 node={node}] {text}"},
        ],
    )
    return reply.choices[0].message.content or ""
