"""Lab 01 self-test variant summary_not_saved: BAD. save_to_db reads the summary under the wrong key, so the saved row's summary is empty."""
