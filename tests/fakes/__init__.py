"""Small real implementations of the project's seams, for tests only (nothing in `cleanroom` imports them)."""
