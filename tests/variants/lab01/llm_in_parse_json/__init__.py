"""Lab 01 self-test variant llm_in_parse_json: BAD. parse_json calls the LLM itself, so its retry calls the LLM again."""
