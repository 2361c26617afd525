"""Lab 01 self-test variant missing_function: BAD. activities.py renamed save_to_db, which the course's worker imports by name."""
