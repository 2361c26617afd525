"""Lab 08 variant client_retries: the OpenAI client keeps its own retries (max_retries defaults to 2)."""
