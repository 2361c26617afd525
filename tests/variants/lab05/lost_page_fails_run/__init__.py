"""Lab 05 known-bad variant lost_page_fails_run: a page that runs out of attempts fails the whole run."""
