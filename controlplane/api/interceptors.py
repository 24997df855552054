"""Server interceptors: every RPC passes authentication, authorisation and error mapping
here, so servicers hold none of it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from controlplane import errors
from controlplane.api import context, status
from controlplane.api.permissions import METHOD_PERMISSIONS, PUBLIC_PREFIXES
from controlplane.auth import keys
from controlplane.auth.api_keys import ApiKeys
from controlplane.auth.key_audit import KeyAudit
from controlplane.registry.names import tenant_of
from pilothouse import wellknown

log = logging.getLogger("pilothouse.api")

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Behavior = Callable[..., Any]
Wrap = Callable[[str, Behavior, bool], Behavior]

# Fields whose values, when they name a tenant's resource, must lie in the caller's tenant.
_SCOPED_FIELDS = ("name", "parent", "tenant", "version")


def tenants_named(request: Message) -> set[str]:
    """Every tenant a request names in its name-like fields, at the top level and one
    message deep (an update's resource)."""
    found: set[str] = set()
    for field, value in request.ListFields():
        if field.type == field.TYPE_STRING and field.name in _SCOPED_FIELDS:
            tenant = tenant_of(value) if isinstance(value, str) else None
            if tenant:
                found.add(tenant)
        elif field.type == field.TYPE_MESSAGE and isinstance(value, Message):
            for inner, inner_value in value.ListFields():
                if inner.name in ("name", "tenant") and isinstance(inner_value, str):
                    tenant = tenant_of(inner_value)
                    if tenant:
                        found.add(tenant)
    return found


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, wrap: Wrap
) -> grpc.RpcMethodHandler[Any, Any]:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(method, handler.unary_unary, False), **kwargs
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(method, handler.unary_stream, True), **kwargs
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(method, handler.stream_unary, False), **kwargs
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        wrap(method, handler.stream_stream, True), **kwargs
    )


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once; later calls reuse the wrapped handler."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not self.applies_to(method):
            return handler
        wrapped = _wrap_handler(handler, method, self.wrap)
        self._wrapped[method] = wrapped
        return wrapped

    def applies_to(self, method: str) -> bool:
        return True

    def wrap(self, method: str, behavior: Behavior, streaming: bool) -> Behavior:
        raise NotImplementedError


class ErrorInterceptor(_WrappingInterceptor):
    """Maps domain errors to their status codes; anything unexpected becomes INTERNAL
    (logged with its traceback), never UNKNOWN."""

    def wrap(self, method: str, behavior: Behavior, streaming: bool) -> Behavior:
        async def abort_for(exc: Exception, ctx: grpc.aio.ServicerContext[Any, Any]) -> None:
            if isinstance(exc, wellknown.OutOfRange):
                exc = errors.InvalidArgument.of(exc.field, str(exc))
            if isinstance(exc, errors.PilothouseError):
                code = status.status_code(exc)
                rich = status.rich_status(exc)
                log.info(
                    "rpc refused",
                    extra={"method": method, "code": code.name, "error": rich.message},
                )
            else:
                log.exception("rpc failed", extra={"method": method})
                code = grpc.StatusCode.INTERNAL
                rich = status.internal_status(f"internal error in {method}; see the server log")
            await ctx.abort(
                code,
                rich.message,
                trailing_metadata=((status.DETAILS_KEY, rich.SerializeToString()),),
            )

        if streaming:

            async def stream(
                request: Any, ctx: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    async for item in behavior(request, ctx):
                        yield item
                except (grpc.aio.AbortError, grpc.aio.BaseError):
                    raise
                except Exception as exc:
                    await abort_for(exc, ctx)

            return stream

        async def unary(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, ctx)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort_for(exc, ctx)

        return unary


class AuthInterceptor(_WrappingInterceptor):
    """Authenticates ``authorization: Bearer <key>``, checks the method's permission and
    that every tenant the request names is the caller's, then exposes the caller through
    ``controlplane.api.context``. Health and reflection stay open."""

    def __init__(self, api_keys: ApiKeys, audit: KeyAudit | None = None) -> None:
        super().__init__()
        self._keys = api_keys
        self._audit = audit

    def applies_to(self, method: str) -> bool:
        return not method.startswith(PUBLIC_PREFIXES)

    def wrap(self, method: str, behavior: Behavior, streaming: bool) -> Behavior:
        async def admit(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> None:
            actor, tenant = "anonymous", None
            try:
                permission = METHOD_PERMISSIONS.get(method)
                if permission is None:
                    raise errors.PermissionDenied(f"{method} is not open to any key")
                token = _bearer(ctx)
                actor = _actor(token)
                principal = await self._keys.authenticate(token)
                tenant = principal.tenant
                principal.require(permission)
                named = sorted(tenants_named(request)) if isinstance(request, Message) else []
                for tenant in named:
                    principal.require_tenant(tenant)
                # The use goes in the log of the tenant it acted in, when it names one.
                tenant = named[0] if len(named) == 1 else principal.tenant
            except (errors.Unauthenticated, errors.PermissionDenied) as e:
                if self._audit is not None:
                    await self._audit.refused(
                        actor=actor,
                        tenant=tenant,
                        method=method,
                        code=status.status_code(e).name,
                        reason=e.message,
                    )
                raise
            if self._audit is not None:
                await self._audit.used(actor=principal.actor, tenant=tenant, method=method)
            context.set_principal(principal)

        if streaming:

            async def stream(
                request: Any, ctx: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await admit(request, ctx)
                async for item in behavior(request, ctx):
                    yield item

            return stream

        async def unary(request: Any, ctx: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(request, ctx)
            return await behavior(request, ctx)

        return unary


def _actor(token: str) -> str:
    """How the audit log names the key a token claims to be (before it is checked)."""
    material = keys.parse(token)
    return f"apiKeys/{material.id}" if material else "anonymous"


def _bearer(ctx: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in ctx.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.Unauthenticated("authorization must be 'Bearer <API key>'")
            return token.strip()
    raise errors.Unauthenticated("missing 'authorization: Bearer <API key>' metadata")
