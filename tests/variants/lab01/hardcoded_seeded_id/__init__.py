"""Lab 01 self-test variant hardcoded_seeded_id: BAD. save_to_db answers a duplicate with the row id the grader used to pre-commit (4242), not the row's."""
