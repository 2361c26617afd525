"""Lab 01 self-test variant non_idempotent_save: BAD. save_to_db always inserts: a retried save cannot find the row it committed."""
