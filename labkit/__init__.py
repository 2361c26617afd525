"""labkit: the shared kit of Durable Agents Lab.

services  real servers (Temporal dev server, the course LLM), for tests and for `lab up`
llm       the course LLM: an OpenAI-compatible server with rules, faults and a ledger
proc      run student code as OS processes; kill, restart, always reap the whole tree
"""
