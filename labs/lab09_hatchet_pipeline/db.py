"""Where the store task writes: one SQLite table of processed documents (SQLModel).

doc_id is unique: the database refuses a second row for the same document, so a store that
inserts blindly fails on its retry instead of silently writing twice. Making the task succeed on a
retry, with one row, is the task's job (look the row up by doc_id first).
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlmodel import Field, SQLModel, create_engine

DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{Path.cwd() / 'lab09.sqlite'}")


class ProcessedDocument(SQLModel, table=True):
    __tablename__ = "processed_documents"

    id: int | None = Field(default=None, primary_key=True)
    doc_id: str = Field(unique=True, index=True)
    provider: str
    title: str
    facts: str
    label: str
    vector: str  # the embedding as JSON


def engine():
    made = create_engine(DATABASE_URL)
    SQLModel.metadata.create_all(made)
    return made
