"""Lab 01 self-test variant client_retries: BAD. The openai client keeps its default retries, so it retries a failed LLM call inside one activity attempt."""
