"""Lab 08 variant good_alt_shape: correct, shaped unlike the reference (index step ids, functools.partial, a list of events, one HTTP helper)."""
