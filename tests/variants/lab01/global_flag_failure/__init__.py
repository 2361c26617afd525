"""Lab 01 self-test variant global_flag_failure: BAD. The deliberate failure is keyed on one module-level bool, not on the attempt."""
