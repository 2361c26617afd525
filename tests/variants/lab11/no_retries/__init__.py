"""Lab 11 variant no_retries: the primary model gets one attempt: any error, even a passing one, switches to the fallback."""
