"""Lab 06 reference solution: an Agents SDK agent whose tools are Temporal activities."""
