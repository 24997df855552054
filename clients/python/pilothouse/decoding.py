"""Requests that do not decode, as both servers answer them: INVALID_ARGUMENT with a
``BadRequest`` naming the request, never gRPC's UNKNOWN.

gRPC decodes a request before any handler (or interceptor's behaviour) runs, and a
message that does not parse (garbage bytes, a string field that is not UTF-8, a Struct
nested past the parser's depth limit) ends the call as UNKNOWN, with nothing logged. The
``DecodeGuard`` interceptor gives each handler a deserializer that never raises: a
message that does not decode becomes an ``Undecodable`` value, which the handler's
wrapper refuses before the servicer (or the authentication in front of it) sees it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class Undecodable:
    """A request message that did not decode."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None or getattr(deserializer, "_decode_guarded", False):
        return deserializer

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError, RecursionError, UnicodeDecodeError, …
            return Undecodable(f"{type(e).__name__}: {str(e)[:200]}")

    parse._decode_guarded = True  # type: ignore[attr-defined]
    return parse


async def refuse(context: grpc.aio.ServicerContext[Any, Any], method: str, reason: str) -> None:
    message = f"the request to {method} does not decode ({reason})"
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="request", description=message)
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=message, details=[packed]
    )
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Put it first among a server's interceptors: it must see requests before the rest."""

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
        if handler is None:
            return None
        wrapped = _guarded(handler, method)
        self._wrapped[method] = wrapped
        return wrapped


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming behaviour's responses: it yields them, or writes them through its
    context and returns (as the health service's Watch does)."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    kwargs = {
        "request_deserializer": _safe(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }

    async def checked_requests(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Undecodable):
                await refuse(context, method, request.reason)
            yield request

    if handler.unary_unary:
        behavior_uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Undecodable):
                await refuse(context, method, request.reason)
            return await behavior_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream:
        behavior_us: Any = handler.unary_stream

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await refuse(context, method, request.reason)
            async for item in _responses(behavior_us(request, context)):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    if handler.stream_unary:
        behavior_su: Any = handler.stream_unary

        async def stream_unary(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            return await behavior_su(checked_requests(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    behavior_ss: Any = handler.stream_stream
    assert behavior_ss is not None

    async def stream_stream(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for item in _responses(behavior_ss(checked_requests(requests, context), context)):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
