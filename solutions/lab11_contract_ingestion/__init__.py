"""Lab 11 reference solution: the contract-ingestion pipeline as choreography (given) and as one Temporal workflow."""
