"""Lab 11: the contract-ingestion pipeline as choreography (given) and as one Temporal workflow."""
