"""Lab 11 variant hardcoded_fallback: the fallback model's name is written in the workflow instead of read from models.py."""
