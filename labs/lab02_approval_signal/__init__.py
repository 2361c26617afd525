"""Lab 02 starter: AnalyzeWorkflow waits for a human decision before it saves."""
