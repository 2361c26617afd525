"""Lab 01 self-test variant missing_function: BAD. worker.py imports an activity that activities.py does not define."""
