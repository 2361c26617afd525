"""Lab 02 reference solution: AnalyzeWorkflow waits for a human decision before it saves."""
