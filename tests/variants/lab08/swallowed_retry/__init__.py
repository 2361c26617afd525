"""Lab 08 variant swallowed_retry: fetch_page catches the HTTP error and returns an empty page, so the step is never retried."""
