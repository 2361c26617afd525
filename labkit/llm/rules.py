"""Rules: which reply the course LLM gives to which request, and which faults it injects.

A rule matches on the request (the last user message, the model, the endpoint);
the first matching rule wins. Faults are counted per rule and per caller from
the ledger, so "fail the first 2 requests" holds across server restarts and
two callers (two students, two tests) never share a counter.

A rule can also script a tool-calling conversation: `turns` is a list of model
turns, each either tool calls or the final reply. Which turn answers a request is
decided by the request alone (how many tool results it already carries), so the
script is deterministic however often a caller retries, and a restarted agent
that re-sends the same conversation gets the same turn.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Endpoint = Literal["chat.completions", "responses", "embeddings", "any"]


class ToolCall(BaseModel):
    """One function call the model asks for: the tool's name and its JSON arguments."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    arguments: dict[str, Any] = {}


class Turn(BaseModel):
    """One model turn of a scripted conversation: tool calls, or the final reply.

    `tool` + `arguments` is one call; `calls` is several in one turn (parallel calls).
    """

    model_config = ConfigDict(extra="forbid")

    tool: str | None = None
    arguments: dict[str, Any] = {}
    calls: list[ToolCall] = []
    reply: str | None = None
    reply_json: Any = None

    @model_validator(mode="after")
    def _one_kind(self) -> Turn:
        kinds = [self.tool is not None, bool(self.calls), self.reply is not None or self.reply_json is not None]
        if sum(kinds) != 1:
            raise ValueError("a turn is exactly one of: `tool` (+ `arguments`), `calls`, or `reply`/`reply_json`")
        if self.arguments and self.tool is None:
            raise ValueError("`arguments` belongs to `tool`")
        return self

    def tool_calls(self) -> list[ToolCall]:
        if self.tool is not None:
            return [ToolCall(tool=self.tool, arguments=self.arguments)]
        return list(self.calls)

    @property
    def is_reply(self) -> bool:
        return not self.tool_calls()


def _cut(text: str) -> str:
    """Cut a text in half: it still looks like JSON, and never parses."""
    cut = text[: max(1, len(text) // 2)]
    try:
        json.loads(cut)  # half a number ("12345" -> "12") is still JSON
    except ValueError:
        return cut
    return "{" + cut


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key fails loudly instead of never matching

    name: str
    match: str | None = Field(None, description="regex searched in the last user message")
    model: str | None = Field(None, description="regex matched against the requested model")
    endpoint: Endpoint = "chat.completions"
    reply: str | None = Field(None, description="reply text")
    reply_json: Any = Field(None, description="reply given as JSON text")
    fail_first: int = Field(0, ge=0, description="fail this many matching requests per caller")
    fail_status: Literal[429, 500, 503] = 500
    fail_always: bool = Field(False, description="fail every matching request (a model that is down), "
                                                  "not only the first `fail_first`")
    latency_ms: int = Field(0, ge=0)
    malformed: bool = Field(False, description="reply with text that is not the promised JSON "
                                                "(tool calls: arguments that are not JSON)")
    turns: list[Turn] = Field([], description="a scripted tool-calling conversation, one entry per model turn")

    @model_validator(mode="after")
    def _script(self) -> Rule:
        if self.turns:
            if self.reply is not None or self.reply_json is not None:
                raise ValueError("a rule with `turns` gives its reply in its last turn, not in `reply`")
            if not self.turns[-1].is_reply:
                raise ValueError("the last of a rule's `turns` must be the final reply (`reply` or `reply_json`)")
        return self

    def matches(self, endpoint: str, model: str, prompt: str) -> bool:
        if self.endpoint != "any" and endpoint != self.endpoint:
            return False
        if self.model is not None and not re.fullmatch(self.model, model):
            return False
        return self.match is None or re.search(self.match, prompt, re.S) is not None

    def reply_text(self) -> str:
        return self._text(self.reply, self.reply_json)

    def _text(self, reply: str | None, reply_json: Any) -> str:
        if reply_json is not None:
            text = json.dumps(reply_json)
        else:
            text = reply if reply is not None else ""
        return _cut(text) if self.malformed else text

    def turn(self, tool_results: int) -> tuple[int, Turn]:
        """The scripted turn that answers a request already carrying `tool_results` tool results.

        Turn i's calls are answered once their results are all in the request; a reply
        ends the script. A rule without `turns` is a one-turn script: its reply.
        """
        if not self.turns:
            if self.reply_json is not None:
                return 0, Turn(reply_json=self.reply_json)
            return 0, Turn(reply=self.reply or "")
        answered = 0
        for index, turn in enumerate(self.turns):
            calls = turn.tool_calls()
            if not calls or tool_results < answered + len(calls):
                return index, turn
            answered += len(calls)
        return len(self.turns) - 1, self.turns[-1]  # unreachable: the last turn is a reply

    def turn_text(self, turn: Turn) -> str:
        return self._text(turn.reply, turn.reply_json)

    def arguments_text(self, call: ToolCall) -> str:
        text = json.dumps(call.arguments)
        return _cut(text) if self.malformed else text


FALLBACK = Rule(name="fallback", reply="OK.")


class RuleBook(BaseModel):
    rules: list[Rule] = []

    def pick(self, endpoint: str, model: str, prompt: str) -> Rule:
        for rule in self.rules:
            if rule.matches(endpoint, model, prompt):
                return rule
        return FALLBACK

    def prepend(self, rules: list[Rule]) -> None:
        """Rules pushed at run time take priority over the book's own."""
        names = {rule.name for rule in rules}
        self.rules = list(rules) + [r for r in self.rules if r.name not in names]

    @classmethod
    def from_file(cls, path: Path) -> RuleBook:
        """Read rules from TOML ([[llm.rules]] or [[rules]]) or JSON ({"rules": [...]})."""
        text = Path(path).read_text()
        data = tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text)
        data = data.get("llm", data)
        return cls.model_validate({"rules": data.get("rules", [])})
