"""Errors of the export that more than one of its modules raises."""

from crossrank.errors import CrossrankError


class SourceError(CrossrankError, ValueError):
    """The export source is missing, not a model folder, or not a supported architecture."""
