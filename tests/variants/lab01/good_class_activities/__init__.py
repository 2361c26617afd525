"""Lab 01 self-test variant good_class_activities: CORRECT, shaped differently from the reference.

The activities are methods of a class that holds the database engine and the LLM
client; activities.py exposes the bound methods of one instance under the names the
course's worker registers, and the workflow schedules them with
workflow.execute_activity_method.
"""
