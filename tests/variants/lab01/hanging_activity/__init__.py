"""Lab 01 self-test variant hanging_activity: BAD. call_llm never returns."""
