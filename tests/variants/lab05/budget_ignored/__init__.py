"""Lab 05 variant budget_ignored: budget_usd is never looked at: the summary is always made."""
