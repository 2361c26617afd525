"""Lab 01 self-test variant no_deliberate_failure: BAD. parse_json never fails, so there is no retry to crash into."""
