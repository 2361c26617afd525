"""Lab 01 self-test variant other_retry_policy: BAD. RetryPolicy(maximum_attempts=5, ...) instead of the lab's 3."""
