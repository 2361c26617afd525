"""The course LLM's HTTP app: OpenAI's wire format, our rules, faults and ledger.

Responses are built from the openai package's own types, so what the real
client receives is exactly what it expects from api.openai.com.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from openai.types.chat import ChatCompletion
from openai.types.completion_usage import CompletionUsage
from pydantic import ValidationError

from .ledger import Ledger, caller_of
from .rules import Rule, RuleBook


def count_tokens(text: str) -> int:
    """A stable stand-in for a tokenizer: about four characters a token."""
    return max(1, (len(text) + 3) // 4)


def last_user_message(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


def openai_error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": None, "code": kind}},
    )


def create_app(ledger_dir: Path, rules: RuleBook) -> FastAPI:
    app = FastAPI(title="course LLM", docs_url=None, redoc_url=None)
    ledger = Ledger(ledger_dir)
    app.state.ledger = ledger
    app.state.rules = rules

    @app.get("/_health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "ledger": str(ledger.path), "rules": [r.name for r in rules.rules]}

    @app.get("/_ledger")
    async def read_ledger(caller: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in ledger.entries(caller=caller, since_id=since)]

    @app.post("/_rules")
    async def push_rules(body: dict[str, Any]) -> dict[str, Any]:
        try:
            pushed = [Rule.model_validate(r) for r in body.get("rules", [])]
        except ValidationError as exc:
            return openai_error(422, f"invalid rule: {exc}", "invalid_request_error")
        rules.prepend(pushed)
        return {"rules": [r.name for r in rules.rules]}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 0,
                                            "owned_by": "durable-agents-lab"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, authorization: str | None = Header(None)):
        body = await request.json()
        caller = caller_of((authorization or "").removeprefix("Bearer ").strip() or None)
        model = str(body.get("model", ""))
        messages = body.get("messages") or []
        prompt = last_user_message(messages)
        if body.get("stream"):
            return openai_error(400, "the course LLM does not stream; call without stream=True",
                                "invalid_request_error")
        rule = rules.pick("chat.completions", model, prompt)
        # Counting and recording happen with no await in between: the check
        # "is this one of the first N?" and the write are one atomic step.
        seen = ledger.count(caller=caller, rule=rule.name)
        if seen < rule.fail_first:
            fault = f"fail_first {seen + 1}/{rule.fail_first}"
            ledger.record(caller=caller, endpoint="chat.completions", model=model, prompt=prompt,
                          request=body, rule=rule.name, status=rule.fail_status, fault=fault, reply=None)
            await asyncio.sleep(rule.latency_ms / 1000)
            kind = "rate_limit_exceeded" if rule.fail_status == 429 else "server_error"
            return openai_error(rule.fail_status, f"injected fault ({fault}) by rule {rule.name!r}", kind)
        text = rule.reply_text()
        ledger.record(caller=caller, endpoint="chat.completions", model=model, prompt=prompt,
                      request=body, rule=rule.name, status=200,
                      fault="malformed" if rule.malformed else None, reply=text)
        await asyncio.sleep(rule.latency_ms / 1000)
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        completion_tokens = count_tokens(text)
        completion = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            object="chat.completion",
            created=int(time.time()),
            model=model or "gpt-4o-mini",
            choices=[{"index": 0, "finish_reason": "stop", "logprobs": None,
                      "message": {"role": "assistant", "content": text}}],
            usage=CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                  total_tokens=prompt_tokens + completion_tokens),
        )
        return JSONResponse(completion.model_dump(mode="json", exclude_none=True))

    return app
