"""Lab 05: the text's ResearchWorkflow with a real fan-out, heartbeats and a budget."""
