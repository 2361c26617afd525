"""Lab 01 self-test variant flag_based_failure: BAD. The deliberate failure is keyed on a module-level flag per workflow, not on the attempt."""
