"""Lab 01 self-test variant worker_never_polls: BAD. activities.py waits at import for a file nobody creates, so the worker never polls."""
