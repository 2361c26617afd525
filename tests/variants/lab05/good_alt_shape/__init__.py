"""Lab 05 variant good_alt_shape: correct, shaped differently from the reference.

Batches of max_parallel pages started with workflow.start_activity; a download task watched by a
progress loop that heartbeats only when bytes arrived and gives up on a stall itself; the summary's
cost added up with Decimal; the workflow class under another Python name.
"""
