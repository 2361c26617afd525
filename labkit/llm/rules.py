"""Rules: which reply the course LLM gives to which request, and which faults it injects.

A rule matches on the request (the last user message, the model, the endpoint);
the first matching rule wins. Faults are counted per rule and per caller from
the ledger, so "fail the first 2 requests" holds across server restarts and
two callers (two students, two tests) never share a counter.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Endpoint = Literal["chat.completions"]


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
    latency_ms: int = Field(0, ge=0)
    malformed: bool = Field(False, description="reply with text that is not the promised JSON")

    def matches(self, endpoint: str, model: str, prompt: str) -> bool:
        if endpoint != self.endpoint:
            return False
        if self.model is not None and not re.fullmatch(self.model, model):
            return False
        return self.match is None or re.search(self.match, prompt, re.S) is not None

    def reply_text(self) -> str:
        if self.reply_json is not None:
            text = json.dumps(self.reply_json)
        else:
            text = self.reply if self.reply is not None else ""
        if self.malformed:
            # Cut the reply in half: still looks like JSON, never parses.
            cut = text[: max(1, len(text) // 2)]
            try:
                json.loads(cut)  # half a number ("12345" -> "12") is still JSON
            except ValueError:
                return cut
            return "{" + cut
        return text


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
