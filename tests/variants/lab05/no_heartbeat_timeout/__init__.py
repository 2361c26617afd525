"""Lab 05 variant no_heartbeat_timeout: extract_content is scheduled without a heartbeat_timeout."""
