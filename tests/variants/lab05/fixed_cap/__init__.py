"""Lab 05 known-bad variant fixed_cap: the fan-out capped at a constant 3, whatever request.max_parallel says."""
