"""Lab 05 reference solution: the text's ResearchWorkflow with a real fan-out, heartbeats and a budget."""
