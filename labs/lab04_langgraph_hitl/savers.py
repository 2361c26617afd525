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


class NamespacedSqliteSaver(SqliteSaver):
    """SqliteSaver whose get_tuple always names the checkpoint namespace, as PostgresSaver's does.

    Asked for a config with a checkpoint_id, langgraph-checkpoint-sqlite 3.1 hands that config back
    as given, without "checkpoint_ns"; its put() then fails with KeyError: 'checkpoint_ns' when
    update_state(get_state(<a past checkpoint>).config, ...) forks from it (`cli fork --sqlite`).
    """

    def get_tuple(self, config):
        found = super().get_tuple(config)
        if found is None or "checkpoint_ns" in found.config.get("configurable", {}):
            return found
        configurable = {**found.config["configurable"], "checkpoint_ns": config["configurable"].get("checkpoint_ns", "")}
        return found._replace(config={**found.config, "configurable": configurable})


@contextmanager
def open_sqlite(path: str | Path) -> Iterator[SqliteSaver]:
    with NamespacedSqliteSaver.from_conn_string(str(path)) as saver:  # creates its tables on first use
        yield saver
