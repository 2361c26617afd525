"""Lab 08 variant late_binding_lambda: the parallel group's lambdas do not bind the url (every one fetches the last page)."""
