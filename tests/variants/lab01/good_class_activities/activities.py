"""The three activities as methods of one class that owns its resources.

The worker builds one AnalysisActivities (one engine, one LLM client) and
registers its bound methods. The activity names stay call_llm, parse_json and
save_to_db.
"""

import asyncio
import json
import os

from openai import AsyncOpenAI
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from .models import Analysis, AnalysisRow


class AnalysisActivities:
    def __init__(self, engine: Engine, llm: AsyncOpenAI) -> None:
        self.engine = engine
        self.llm = llm

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
