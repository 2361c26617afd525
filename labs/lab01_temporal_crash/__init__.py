"""Lab 01 starter: the text's AnalyzeWorkflow crash lab, corrected so it runs."""
