"""Tools for performance work, run from the repository root as ``python -m tools.<name>``."""
