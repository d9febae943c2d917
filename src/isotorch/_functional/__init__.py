"""Implementation modules of :mod:`isotorch.functional` (one per primitive role)."""
