"""Lab 08 variant given_up_page_fails_run: the StepError of a page out of retries is not caught."""
