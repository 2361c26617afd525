"""Lab 05 known-bad variant silent_download: extract_content never heartbeats (a heartbeat_timeout is set)."""
