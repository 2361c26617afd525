"""The course LLM: a local OpenAI-compatible server with scripted replies, faults and a ledger."""

from .ledger import Ledger, LedgerEntry
from .rules import Rule, RuleBook

__all__ = ["Ledger", "LedgerEntry", "Rule", "RuleBook"]
