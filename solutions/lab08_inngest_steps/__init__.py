"""Lab 08 (solution): Inngest step memoization."""
