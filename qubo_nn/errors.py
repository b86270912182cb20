"""Exceptions raised at the boundary (bad files, bad options, bad tensors).

The CLI turns :class:`QuboNNError` into a message and exit code 2; anything else is a bug.
"""


class QuboNNError(ValueError):
    """Bad user input: the message says what was expected and what came."""


class OfflineError(QuboNNError, RuntimeError):
    """Data or weights are missing and cannot be downloaded; the message names the remedy."""
