"""Errors the SDK raises. gRPC's own exceptions never reach a caller.

ApiError           the server refused or failed a call; ``code`` is the gRPC status
                   name, ``field_violations`` and ``precondition_violations`` carry the
                   server's google.rpc details
└── Unavailable    the server could not be reached
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    type: str
    subject: str
    description: str


@dataclass
class ApiError(Exception):
    code: str
    """gRPC status name, e.g. ``INVALID_ARGUMENT``."""
    message: str
    field_violations: list[FieldViolation] = field(default_factory=list)
    precondition_violations: list[PreconditionViolation] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def from_rpc(cls, error: grpc.aio.AioRpcError) -> ApiError:
        code = error.code().name
        target = Unavailable if code == "UNAVAILABLE" else ApiError
        result = target(code, error.details() or "")
        for key, value in error.trailing_metadata() or ():
            if key == DETAILS_KEY and isinstance(value, bytes):
                result._read_details(value)
        return result

    def _read_details(self, raw: bytes) -> None:
        status = status_pb2.Status()
        status.ParseFromString(raw)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.field_violations += [
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                ]
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                self.precondition_violations += [
                    PreconditionViolation(v.type, v.subject, v.description)
                    for v in failure.violations
                ]


class Unavailable(ApiError):
    pass
