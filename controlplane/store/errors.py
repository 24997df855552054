"""What the store reports when the database refuses a write."""

from __future__ import annotations


class DuplicateKey(Exception):
    """A row with the same key already exists."""


class ReferenceViolation(Exception):
    """A foreign key refused the write: a referenced row is missing, or a row being
    deleted is still referenced."""
