"""Lab 01 self-test variant llm_reask_in_parse_json: BAD. parse_json asks the LLM again to clean up the reply text, on every attempt."""
