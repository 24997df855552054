"""The authenticated caller of the RPC being served."""

from __future__ import annotations

from contextvars import ContextVar

from controlplane.auth.principal import Principal

_principal: ContextVar[Principal] = ContextVar("pilothouse_principal")


def set_principal(principal: Principal) -> None:
    _principal.set(principal)


def principal() -> Principal:
    """The caller; only set inside an RPC that passed the auth interceptor."""
    return _principal.get()
