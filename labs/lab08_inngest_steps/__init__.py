"""Lab 08 (starter): Inngest step memoization."""
