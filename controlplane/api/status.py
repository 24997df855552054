"""One mapping from the error vocabulary (``controlplane.errors``) to gRPC statuses, with
``google.rpc`` details a caller can act on."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from controlplane import errors
from pilothouse.clipping import clip

_CODES: list[tuple[type[errors.PilothouseError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.EtagMismatch, grpc.StatusCode.ABORTED),
]

DETAILS_KEY = "grpc-status-details-bin"

# A status travels in the response's trailing metadata, which gRPC caps at 16 KiB with
# every header: a refusal that quoted a caller's multi-KB value in full (or listed every
# one of a thousand problems) came back as RESOURCE_EXHAUSTED instead of the error.
MAX_MESSAGE = 1000
MAX_VIOLATIONS = 10
MAX_FIELD = 200
MAX_DESCRIPTION = 300


def status_code(error: errors.PilothouseError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(error: errors.PilothouseError) -> status_pb2.Status:
    """The status with its details, as sent in the grpc-status-details-bin trailer."""
    code = status_code(error)
    message = error.message
    if isinstance(error, errors.InvalidArgument) and len(error.violations) > MAX_VIOLATIONS:
        shown = error.violations[:MAX_VIOLATIONS]
        message = "; ".join(f"{v.field}: {clip(v.description, MAX_DESCRIPTION)}" for v in shown)
        message += f"; and {len(error.violations) - MAX_VIOLATIONS} more problems"
    status = status_pb2.Status(code=code.value[0], message=clip(message, MAX_MESSAGE))
    detail: (
        error_details_pb2.BadRequest
        | error_details_pb2.PreconditionFailure
        | (error_details_pb2.ResourceInfo)
        | None
    ) = None
    if isinstance(error, errors.InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=clip(v.field, MAX_FIELD), description=clip(v.description, MAX_DESCRIPTION)
                )
                for v in error.violations[:MAX_VIOLATIONS]
            ]
        )
    elif isinstance(error, errors.FailedPrecondition) and error.violations:
        detail = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type,
                    subject=clip(v.subject, MAX_FIELD),
                    description=clip(v.description, MAX_DESCRIPTION),
                )
                for v in error.violations[:MAX_VIOLATIONS]
            ]
        )
    elif isinstance(error, (errors.NotFound, errors.AlreadyExists)):
        detail = error_details_pb2.ResourceInfo(
            resource_type=error.resource_type, resource_name=clip(error.name, MAX_FIELD)
        )
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def internal_status(message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message)
