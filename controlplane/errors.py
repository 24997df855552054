"""The control plane's error vocabulary.

Domain code raises these; ``controlplane.api.status`` maps each to one gRPC status code,
with ``google.rpc`` details where they help a caller::

    PilothouseError
    ├── InvalidArgument     INVALID_ARGUMENT     BadRequest (one violation per field)
    ├── Unauthenticated     UNAUTHENTICATED
    ├── PermissionDenied    PERMISSION_DENIED
    ├── NotFound            NOT_FOUND            ResourceInfo
    ├── AlreadyExists       ALREADY_EXISTS       ResourceInfo
    ├── FailedPrecondition  FAILED_PRECONDITION  PreconditionFailure
    └── EtagMismatch        ABORTED
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one field of a request."""

    field: str
    """Path of the field, e.g. ``tool.input_schema`` or ``agent.tools[2]``."""
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition, e.g. a resource that still uses the one being deleted."""

    type: str
    """A short code: ``IN_USE``, ``MISSING_REFERENCE``, ``NOT_EMPTY``."""
    subject: str
    """The resource concerned, by name."""
    description: str


class PilothouseError(Exception):
    """Base of every error the control plane reports to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PilothouseError):
    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class Unauthenticated(PilothouseError):
    pass


class PermissionDenied(PilothouseError):
    pass


class NotFound(PilothouseError):
    def __init__(self, resource_type: str, name: str) -> None:
        self.resource_type = resource_type
        self.name = name
        super().__init__(f"{resource_type} {name!r} not found")


class AlreadyExists(PilothouseError):
    def __init__(self, resource_type: str, name: str) -> None:
        self.resource_type = resource_type
        self.name = name
        super().__init__(f"{resource_type} {name!r} already exists")


class FailedPrecondition(PilothouseError):
    def __init__(self, message: str, violations: Sequence[PreconditionViolation] = ()) -> None:
        self.violations = tuple(violations)
        super().__init__(message)


class EtagMismatch(PilothouseError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"etag mismatch for {name!r}: it changed since it was read; read it again and retry"
        )
