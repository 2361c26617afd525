"""Open a checkpointer: PostgreSQL (part 1) or a SQLite file (part 2).

`from_conn_string` is a context manager: it opens the connection on entry and
closes it on exit, so the saver exists only inside the `with` block. Passing
it straight to `compile()` (as §64.2.3's one-line recipe does) hands LangGraph
a context manager instead of a saver, and fails.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver


@contextmanager
def open_postgres(url: str) -> Iterator[PostgresSaver]:
    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()  # creates the checkpoint tables on first use; safe to call every time
        yield saver


@contextmanager
def open_sqlite(path: str | Path) -> Iterator[SqliteSaver]:
    with SqliteSaver.from_conn_string(str(path)) as saver:  # creates its tables on first use
        yield saver
