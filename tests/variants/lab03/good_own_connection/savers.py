"""Checkpointers built from connections we open ourselves (instead of from_conn_string)."""

from __future__ import annotations

import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from psycopg.rows import dict_row


@contextmanager
def open_postgres(url: str) -> Iterator[PostgresSaver]:
    # PostgresSaver needs autocommit and dict rows; prepare_threshold=0 avoids prepared statements.
    with psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row) as conn:
        saver = PostgresSaver(conn)
        saver.setup()
        yield saver


@contextmanager
def open_sqlite(path: str | Path) -> Iterator[SqliteSaver]:
    # LangGraph runs checkpoint writes on a worker thread, hence check_same_thread=False.
    with closing(sqlite3.connect(str(path), check_same_thread=False)) as conn:
        yield SqliteSaver(conn)
