"""The Pilothouse Python SDK, the ``pilothouse`` CLI and the generated ``pilothouse.v1`` stubs."""

from pilothouse.client import Client, ClientConfig, TlsConfig
from pilothouse.errors import ApiError, FieldViolation, PreconditionViolation, Unavailable

__all__ = [
    "ApiError",
    "Client",
    "ClientConfig",
    "FieldViolation",
    "PreconditionViolation",
    "TlsConfig",
    "Unavailable",
]
