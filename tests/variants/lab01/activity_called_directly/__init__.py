"""Lab 01 self-test variant activity_called_directly: BAD. The workflow calls the call_llm function itself instead of scheduling it as an activity."""
