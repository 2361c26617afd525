"""Lab 01 self-test variant llm_cached_in_parse_json: BAD. parse_json makes the LLM call (call_llm only passes the prompt on) and caches the reply on disk, so the LLM is still called once per run."""
