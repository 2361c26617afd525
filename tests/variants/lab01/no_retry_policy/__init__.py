"""Lab 01 self-test variant no_retry_policy: BAD. No retry_policy passed: the server's default policy applies."""
