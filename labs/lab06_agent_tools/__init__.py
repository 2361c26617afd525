"""Lab 06 starter: an Agents SDK agent whose tools are Temporal activities (see README.md)."""
