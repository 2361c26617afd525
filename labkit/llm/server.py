"""The course LLM's HTTP app: OpenAI's wire format, our rules, faults and ledger.

Responses are built from the openai package's own types, so what the real
client receives is exactly what it expects from api.openai.com.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from openai.types import CreateEmbeddingResponse, Embedding
from openai.types.create_embedding_response import Usage as EmbeddingUsage
from openai.types.chat import ChatCompletion
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage
from openai.types.responses import (Response, ResponseFunctionToolCall, ResponseOutputMessage,
                                     ResponseOutputText, ResponseUsage, Tool)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import TypeAdapter, ValidationError

from .. import attribution
from . import embeddings
from .ledger import Ledger, caller_of
from .tokens import chat_prompt_tokens, count_tokens, responses_input_tokens, usage_for  # noqa: F401
from .rules import Rule, RuleBook


TOOL = TypeAdapter(Tool)


def last_user_message(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (Chat Completions messages or Responses input items)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: "text" (chat) or "input_text" (responses)
                return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


def echo_tools(tools: Any) -> list[Any]:
    """The request's tools, as the real API echoes them in the response (only those the types know)."""
    echoed = []
    for tool in tools or []:
        try:
            echoed.append(TOOL.validate_python(tool))
        except ValidationError:
            continue
    return echoed


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

    def answer(endpoint: str, body: dict[str, Any], request: Request, prompt: str,
               tool_results: int, prompt_tokens: int):
        """Pick the rule, inject its fault or record its turn (with its usage and the origin the
        request carried): (rule, turn index, turn, usage, None) or (rule, ..., an error response)."""
        authorization = request.headers.get("authorization")
        origin = attribution.parse(request.headers.get(attribution.HEADER))
        caller = caller_of((authorization or "").removeprefix("Bearer ").strip() or None)
        model = str(body.get("model", ""))
        rule = rules.pick(endpoint, model, prompt)
        # Counting and recording happen with no await in between: the check
        # "is this one of the first N?" and the write are one atomic step.
        seen = ledger.count(caller=caller, rule=rule.name)
        if rule.fail_always or seen < rule.fail_first:
            fault = "fail_always" if rule.fail_always else f"fail_first {seen + 1}/{rule.fail_first}"
            ledger.record(caller=caller, endpoint=endpoint, model=model, prompt=prompt,
                          request=body, rule=rule.name, status=rule.fail_status, fault=fault, reply=None,
                          origin=origin)
            kind = "rate_limit_exceeded" if rule.fail_status == 429 else "server_error"
            return rule, None, None, None, openai_error(
                rule.fail_status, f"injected fault ({fault}) by rule {rule.name!r}", kind)
        index, turn = rule.turn(tool_results)
        calls = turn.tool_calls()
        if calls:
            reply = json.dumps([{"call": c.tool, "arguments": rule.arguments_text(c)} for c in calls])
            usage = usage_for(prompt_tokens, "".join(rule.arguments_text(c) for c in calls))
        else:
            reply = rule.turn_text(turn)
            usage = usage_for(prompt_tokens, reply)
        ledger.record(caller=caller, endpoint=endpoint, model=model, prompt=prompt, request=body,
                      rule=rule.name, status=200, fault="malformed" if rule.malformed else None,
                      reply=reply, turn=index, origin=origin, usage=usage.as_dict())
        return rule, index, turn, usage, None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await request.json()
        messages = body.get("messages") or []
        if body.get("stream"):
            return openai_error(400, "the course LLM does not stream; call without stream=True",
                                "invalid_request_error")
        tool_results = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")
        rule, _, turn, usage, error = answer("chat.completions", body, request, last_user_message(messages),
                                             tool_results, chat_prompt_tokens(messages))
        await asyncio.sleep(rule.latency_ms / 1000)
        if error is not None:
            return error
        calls = turn.tool_calls()
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": c.tool, "arguments": rule.arguments_text(c)}} for c in calls]}
            text = "".join(c["function"]["arguments"] for c in message["tool_calls"])
        else:
            text = rule.turn_text(turn)
            message = {"role": "assistant", "content": text}
        completion = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            object="chat.completion",
            created=int(time.time()),
            model=body.get("model") or "gpt-4o-mini",
            choices=[{"index": 0, "finish_reason": "tool_calls" if calls else "stop", "logprobs": None,
                      "message": message}],
            usage=CompletionUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                                  total_tokens=usage.total_tokens,
                                  completion_tokens_details=CompletionTokensDetails(
                                      reasoning_tokens=usage.reasoning_tokens)),
        )
        return JSONResponse(completion.model_dump(mode="json", exclude_none=True))

    @app.post("/v1/responses")
    async def responses(request: Request):
        body = await request.json()
        if body.get("stream"):
            return openai_error(400, "the course LLM does not stream; call without stream=True",
                                "invalid_request_error")
        items = body.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else list(items or [])
        tool_results = sum(1 for item in items if isinstance(item, dict) and item.get("type") == "function_call_output")
        rule, _, turn, usage, error = answer("responses", body, request, last_user_message(items), tool_results,
                                             responses_input_tokens(body.get("instructions"), items))
        await asyncio.sleep(rule.latency_ms / 1000)
        if error is not None:
            return error
        calls = turn.tool_calls()
        if calls:
            output = [ResponseFunctionToolCall(type="function_call", id=f"fc_{uuid.uuid4().hex[:24]}",
                                               call_id=f"call_{uuid.uuid4().hex[:24]}", name=c.tool,
                                               arguments=rule.arguments_text(c), status="completed")
                      for c in calls]
            text = "".join(item.arguments for item in output)
        else:
            text = rule.turn_text(turn)
            output = [ResponseOutputMessage(
                type="message", id=f"msg_{uuid.uuid4().hex[:24]}", role="assistant", status="completed",
                content=[ResponseOutputText(type="output_text", text=text, annotations=[])])]
        response = Response(
            id=f"resp_{uuid.uuid4().hex[:24]}",
            object="response",
            created_at=time.time(),
            model=body.get("model") or "gpt-4o-mini",
            status="completed",
            instructions=body.get("instructions"),
            output=output,
            parallel_tool_calls=bool(body.get("parallel_tool_calls", True)),
            tool_choice=body.get("tool_choice") or "auto",
            tools=echo_tools(body.get("tools")),
            usage=ResponseUsage(
                input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                output_tokens_details=OutputTokensDetails(reasoning_tokens=usage.reasoning_tokens)),
        )
        return JSONResponse(response.model_dump(mode="json", exclude_none=True))

    @app.post("/v1/embeddings")
    async def create_embeddings(request: Request):
        """One vector per input text (labkit.llm.embeddings: deterministic per model and text). Rules
        with endpoint="embeddings" decide faults and latency, matched on the input texts (joined by
        newlines) and the model; the ledger records the request like a chat call, with the origin."""
        body = await request.json()
        texts = embeddings.input_texts(body.get("input"))
        if not texts or any(not text for text in texts):
            return openai_error(400, "input must be a non-empty string or a list of non-empty strings",
                                "invalid_request_error")
        dimensions = body.get("dimensions")
        dimensions = embeddings.DEFAULT_DIMENSIONS if dimensions is None else dimensions
        if type(dimensions) is not int or not 1 <= dimensions <= 3072:
            return openai_error(400, "dimensions must be an integer from 1 to 3072", "invalid_request_error")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return openai_error(400, "encoding_format must be 'float' or 'base64'", "invalid_request_error")
        tokens = sum(count_tokens(text) for text in texts)
        origin = attribution.parse(request.headers.get(attribution.HEADER))
        caller = caller_of((request.headers.get("authorization") or "").removeprefix("Bearer ").strip() or None)
        model = str(body.get("model", ""))
        prompt = "\n".join(texts)
        rule = rules.pick("embeddings", model, prompt)
        usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens, "reasoning_tokens": 0}
        seen = ledger.count(caller=caller, rule=rule.name)  # no await before the record: one atomic step
        if rule.fail_always or seen < rule.fail_first:
            fault = "fail_always" if rule.fail_always else f"fail_first {seen + 1}/{rule.fail_first}"
            ledger.record(caller=caller, endpoint="embeddings", model=model, prompt=prompt, request=body,
                          rule=rule.name, status=rule.fail_status, fault=fault, reply=None, origin=origin)
            await asyncio.sleep(rule.latency_ms / 1000)
            kind = "rate_limit_exceeded" if rule.fail_status == 429 else "server_error"
            return openai_error(rule.fail_status, f"injected fault ({fault}) by rule {rule.name!r}", kind)
        vectors = [embeddings.vector(model, text, dimensions) for text in texts]
        ledger.record(caller=caller, endpoint="embeddings", model=model, prompt=prompt, request=body,
                      rule=rule.name, status=200, fault=None,
                      reply=json.dumps({"vectors": len(vectors), "dimensions": dimensions}),
                      origin=origin, usage=usage)
        await asyncio.sleep(rule.latency_ms / 1000)
        if encoding == "base64":  # the wire carries a string where the type says list[float]
            data = [Embedding.model_construct(embedding=embeddings.to_base64(v), index=i, object="embedding")
                    for i, v in enumerate(vectors)]
        else:
            data = [Embedding(embedding=v, index=i, object="embedding") for i, v in enumerate(vectors)]
        response = CreateEmbeddingResponse.model_construct(
            data=data, model=model, object="list",
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
        return JSONResponse(response.model_dump(mode="json", warnings=False))

    return app
