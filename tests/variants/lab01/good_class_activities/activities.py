"""The three activities as methods of one class that owns its resources.

One AnalysisActivities holds the database engine and the LLM client, made on
first use. The course's worker imports call_llm, parse_json and save_to_db from
this module: they are the bound methods of that one instance. The activity names
stay call_llm, parse_json and save_to_db.
"""

import asyncio
import functools
import json
import os
import threading

from openai import AsyncOpenAI
from pydantic import ValidationError
from sqlmodel import Session, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from .models import Analysis, AnalysisRow, make_engine


class AnalysisActivities:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    @functools.cached_property
    def llm(self) -> AsyncOpenAI:
        return AsyncOpenAI(max_retries=0)  # Temporal owns retries

    @property
    def engine(self):
        with self._lock:  # two first saves in two threads must not both create the table
            if "_engine" not in self.__dict__:
                self._engine = make_engine()
            return self._engine

    @activity.defn
    async def call_llm(self, prompt: str) -> str:
        response = await self.llm.chat.completions.create(
            model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
            messages=[
                {"role": "system", "content": "Reply with JSON: sentiment, summary, topics."},
                {"role": "user", "content": prompt},
            ],
        )
        return response.choices[0].message.content or ""

    @activity.defn
    async def parse_json(self, text: str) -> dict:
        if activity.info().attempt < 2:
            raise ApplicationError("first attempt fails on purpose")
        try:
            return Analysis.model_validate_json(text).model_dump()
        except (json.JSONDecodeError, ValidationError) as err:
            raise ApplicationError(f"not a valid analysis: {err}", non_retryable=True) from err

    @activity.defn
    async def save_to_db(self, row: dict) -> int:
        # The database work is blocking: run it in a thread, off the event loop.
        return await asyncio.to_thread(self._save, activity.info().workflow_id, row)

    def _save(self, workflow_id: str, row: dict) -> int:
        with Session(self.engine) as session:
            found = session.exec(select(AnalysisRow.id).where(AnalysisRow.workflow_id == workflow_id)).first()
            if found is not None:
                return found
            saved = AnalysisRow(workflow_id=workflow_id, sentiment=row["sentiment"],
                                summary=row["summary"], topics=",".join(row["topics"]))
            session.add(saved)
            session.commit()
            return saved.id


# What the course's worker registers: the methods of one instance.
_activities = AnalysisActivities()
call_llm = _activities.call_llm
parse_json = _activities.parse_json
save_to_db = _activities.save_to_db
