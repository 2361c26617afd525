"""Lab 05 variant fetch_retry_loop: extract_content retries a failed fetch itself, three times."""
