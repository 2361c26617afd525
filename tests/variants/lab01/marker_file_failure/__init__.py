"""Lab 01 self-test variant marker_file_failure: BAD. The deliberate failure is keyed on a marker file in the working directory, not on the attempt."""
