"""Lab 01 self-test variant syntax_error: BAD. activities.py does not parse."""
