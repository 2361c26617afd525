"""Lab 10 variant: the batch loop runs in the pod, outside the graph (BUG(loop_outside_boundary))."""
