"""Lab 05 variant no_cap: every page's activity at once: no semaphore, max_parallel ignored."""
