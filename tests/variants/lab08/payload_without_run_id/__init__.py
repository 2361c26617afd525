"""Lab 08 variant payload_without_run_id: the completion event's data leaves out run_id."""
