"""Lab 01 reference solution: the text's AnalyzeWorkflow crash lab, corrected so it runs."""
