"""Lab 01 self-test variant nondeterministic_workflow: BAD. The workflow reads the wall clock, so a replay schedules a different command."""
