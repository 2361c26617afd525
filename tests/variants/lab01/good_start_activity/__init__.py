"""Lab 01 self-test variant good_start_activity: CORRECT, shaped differently from the reference.

The workflow starts each activity with workflow.start_activity and awaits the
handle it returns, instead of workflow.execute_activity.
"""
