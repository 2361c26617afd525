"""Lab 05 known-bad variant non_retryable_5xx: every HTTP error raised as non-retryable, a 503 too."""
