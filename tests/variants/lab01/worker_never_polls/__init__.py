"""Lab 01 self-test variant worker_never_polls: BAD. worker.py blocks forever before it creates the Worker."""
