"""Settings and data shared by the workflow, the activities, the worker and the starter.

The strings below are the lab's contract with the checks: the workflow's name, the tools' names
(the course LLM's script calls them by name), and the prefix of a refused query.
"""

import os
from dataclasses import dataclass
from pathlib import Path

TASK_QUEUE = os.environ.get("TEMPORAL_TASK_QUEUE", "lab06-agent-tools")
DEFAULT_MODEL = "gpt-4o-mini"

# What query_database answers instead of rows when it will not run a statement. The model
# reads it as the tool's output, so it says why: "refused: only one SELECT statement ...".
REFUSED = "refused:"

# At most this many rows go back to the model: a tool's output is part of the next prompt.
MAX_ROWS = 50

INSTRUCTIONS = (
    "You are a data analyst for the sales team. Answer questions with the query_database tool "
    "(read-only SQLite; table sales(id, sold_on, region, product, units, unit_price)). When the "
    "user asks you to tell someone, use send_notification. Keep the final answer short."
)


@dataclass
class AnalystRequest:
    """Workflow input: the user's question, and the model to ask (the course LLM answers any name)."""

    question: str
    model: str = DEFAULT_MODEL


def database_path() -> Path:
    """The sales dataset, from LAB06_DATABASE; default .lab/lab06_sales.sqlite under the working directory."""
    return Path(os.environ.get("LAB06_DATABASE") or Path(".lab") / "lab06_sales.sqlite")


def notify_url() -> str:
    """The chat service's endpoint (the course's notification sink), from LAB06_NOTIFY_URL."""
    return os.environ.get("LAB06_NOTIFY_URL", "http://127.0.0.1:8320/api/messages")


def notify_token() -> str:
    """Who is posting: the sink keeps each token's messages (and idempotency keys) apart."""
    return os.environ.get("LAB06_NOTIFY_TOKEN", "lab-student")
