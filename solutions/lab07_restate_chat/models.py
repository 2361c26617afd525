"""Settings and the shapes a chat session passes around.

Messages are plain dicts in the Chat Completions format ({"role": ..., "content": ...}), so the
same value can be sent to the model, journaled by Restate and kept in the object's state.
"""

import os

SERVICE = "ChatSession"  # the virtual object's name: its URL is /ChatSession/<session id>/<handler>
CONVERSATION = "conversation"  # the state key that holds a session's messages
MAX_TURNS = 4  # model turns per question: an agent loop always has a bound

SYSTEM_PROMPT = (
    "You are the support agent of a small web shop. When a customer needs a person to act "
    "(a refund, a lost parcel), tell the team with the post_message tool, then answer the "
    "customer in one or two sentences."
)

# The tool the model may call; tools.run_tool carries it out.
TOOLS = [{
    "type": "function",
    "function": {
        "name": "post_message",
        "description": "Post a message to the support team's chat channel, such as #support.",
        "parameters": {
            "type": "object",
            "properties": {"channel": {"type": "string"}, "text": {"type": "string"}},
            "required": ["channel", "text"],
        },
    },
}]


def user_message(question: str) -> dict:
    """The customer's question as a message. The [lab07 chat] tag picks the course LLM's script."""
    return {"role": "user", "content": f"[lab07 chat] {question}"}


def model() -> str:
    return os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


def service_bind() -> str:
    """Where the service listens: host:port, or fd://N (a socket the course bound for it)."""
    return os.environ.get("LAB07_BIND", "127.0.0.1:9080")


def notify_url() -> str:
    """The team chat (the course's notification sink)."""
    return os.environ.get("LAB07_NOTIFY_URL", "http://127.0.0.1:8320/api/messages")


def notify_token() -> str:
    return os.environ.get("LAB07_NOTIFY_TOKEN", "lab-student")


def tool_timeout_s() -> float:
    return float(os.environ.get("LAB07_TOOL_TIMEOUT_S", "30"))


def ingress_url() -> str:
    """Restate's ingress: where clients call handlers (restate-server's default port 8080)."""
    return os.environ.get("RESTATE_INGRESS_URL", "http://127.0.0.1:8080")


def admin_url() -> str:
    """Restate's admin API: deployments and the SQL introspection (default port 9070)."""
    return os.environ.get("RESTATE_ADMIN_URL", "http://127.0.0.1:9070")
