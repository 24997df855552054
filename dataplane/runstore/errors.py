"""What the run store refuses."""

from __future__ import annotations


class LeaseLost(Exception):
    """The run was claimed by another executor (or finished) since this lease was taken:
    the holder must stop working on it at once. Its write was not applied."""


class RunNotFound(Exception):
    pass


class IdempotencyConflict(Exception):
    """A run with this idempotency key exists but was started differently."""
