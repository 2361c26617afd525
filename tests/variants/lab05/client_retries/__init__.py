"""Lab 05 variant client_retries: the openai client keeps its own retries (max_retries defaults to 2)."""
