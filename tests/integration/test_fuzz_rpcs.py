"""Fuzzing every unary RPC of both servers, found through their reflection services.

A control plane and an executor run as processes of their own on loopback. For each
unary method the servers list, Hypothesis builds requests from the method's descriptor,
as a hostile caller would: strings of odd shapes and sizes, names of other tenants and of
nothing, integers and floats at their extremes (NaN, infinities), unknown enum values,
durations and timestamps out of range, Structs nested past the parser's limit, then
bytes that are not the message at all (cut, flipped, invalid UTF-8). The test fails on
UNKNOWN or INTERNAL, on a server that exits, and on a health check slower than a second
(a generous bound: a stalled event loop takes far longer). Bounded in time: a few seconds
per method, a couple of minutes in all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane import launch
from controlplane.auth import keys
from pilothouse.v1 import api_key_pb2, api_key_pb2_grpc, tenant_pb2, tenant_pb2_grpc
from tests.executors import Executor, launch_executor

EXAMPLES_PER_METHOD = int(os.environ.get("PILOTHOUSE_FUZZ_EXAMPLES", "40"))
SECONDS_PER_METHOD = 6.0
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
TENANT = f"fuzz-{secrets.token_hex(3)}"
OTHER = "tenants/someone-else"

TEXTS = [
    "",
    f"tenants/{TENANT}",
    f"tenants/{TENANT}/tools/echo",
    f"tenants/{TENANT}/agents/a",
    f"tenants/{TENANT}/runs/00000000-0000-0000-0000-000000000000",
    f"tenants/{TENANT}/prompts/p/versions/0123456789abcdef",
    OTHER,
    "tenants/-",
    "apiKeys/abc",
    "x" * 5000,
    "\x00\x01",
    "ÿ" * 300,
    "🙂" * 100,
    "../../etc/passwd",
    "(a+)+$",
    "NaN",
    "1E+999999999",
    "-1",
    "ph_aaaaaaaaaaaa_" + "A" * 43,
]


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(TEXTS), st.text(max_size=40))


def _structs(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), _strings()
    )
    if depth <= 0:
        return leaf
    return st.one_of(
        leaf,
        st.lists(_structs(depth - 1), max_size=3),
        st.dictionaries(_strings(), _structs(depth - 1), max_size=3),
    )


INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    cpp = f.cpp_type
    if cpp in INT_RANGES:
        low, high = INT_RANGES[cpp]
        return st.one_of(st.sampled_from([low, high, 0, -1, 1]), st.integers(low, high))
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if cpp == 6 else 64)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return st.integers(-3, 40)  # unknown values included
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    return _strings()


def _message(descriptor: Descriptor, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """Field values for a message, as a dict (set onto the message by ``_fill``)."""
    full = descriptor.full_name
    if full == "google.protobuf.Struct":
        return st.builds(lambda v: {"__struct__": v}, st.dictionaries(_strings(), _structs(3)))
    if full in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        return st.fixed_dictionaries(
            {
                "seconds": st.one_of(
                    st.sampled_from([-(2**63), 2**63 - 1, 10**15, -(10**15), 0, 60]),
                    st.integers(-(2**40), 2**40),
                ),
                "nanos": st.sampled_from([0, 1, -1, 999_999_999, 10**9, -(2**31)]),
            }
        )
    if depth <= 0:
        return st.just({})
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_field, value_field = f.message_type.fields
            values = (
                _message(value_field.message_type, depth - 1)
                if value_field.message_type is not None
                else _scalar(value_field)
            )
            optional[f.name] = st.dictionaries(_scalar(key_field), values, max_size=4)
            continue
        single = _message(f.message_type, depth - 1) if f.message_type else _scalar(f)
        optional[f.name] = st.lists(single, max_size=4) if f.is_repeated else single
    return st.fixed_dictionaries({}, optional=optional)


def _fill(message: Message, values: dict[str, Any]) -> None:
    if "__struct__" in values:
        with contextlib.suppress(ValueError, TypeError):
            message.update(values["__struct__"])  # type: ignore[attr-defined]
        return
    descriptor = message.DESCRIPTOR
    for name, value in values.items():
        f = descriptor.fields_by_name[name]
        target = getattr(message, name)
        try:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                value_field = f.message_type.fields_by_name["value"]
                for k, v in value.items():
                    if value_field.message_type is not None:
                        _fill(target[k], v)
                    else:
                        target[k] = v
            elif f.is_repeated:
                for item in value:
                    if f.message_type is not None:
                        _fill(target.add(), item)
                    else:
                        target.append(item)
            elif f.message_type is not None:
                _fill(target, value)
                target.SetInParent()
            else:
                setattr(message, name, value)
        except (ValueError, TypeError, OverflowError):
            pass  # a value the Python runtime itself will not hold


def _deep_struct(depth: int) -> bytes:
    """A Struct nested ``depth`` deep, encoded by hand (the Python runtime will not build
    it): field 1 (fields) → map entry → Value.struct_value → Struct …"""
    inner = b""
    for _ in range(depth):
        value = b"\x2a" + _varint(len(inner)) + inner  # Value.struct_value = 5
        entry = b"\x0a\x01k" + b"\x12" + _varint(len(value)) + value
        inner = b"\x0a" + _varint(len(entry)) + entry
    return inner


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _raw_variants(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bytes that are not (quite) the message."""
    return st.one_of(
        st.binary(max_size=64),
        st.just(b"\x0a\x04\xff\xfe\xfd\xfc"),  # field 1 as invalid UTF-8
        st.just(b"\x0a" + _varint(2**31)),  # a length past the end
        st.just(_deep_struct(120)),
        st.integers(0, max(0, len(valid) - 1)).map(lambda n: valid[:n]),
        st.integers(0, max(0, len(valid) - 1)).map(
            lambda n: valid[:n] + bytes([valid[n] ^ 0xFF]) + valid[n + 1 :] if valid else b"\xff"
        ),
    )


@dataclass
class Target:
    name: str
    address: str
    key: str
    process: subprocess.Popen[Any]
    methods: list[MethodDescriptor] = field(default_factory=list)


def _unary_methods(address: str) -> list[MethodDescriptor]:
    channel = grpc.insecure_channel(address)
    try:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        methods = []
        for service_name in database.get_services():
            if service_name.startswith(("grpc.reflection", "grpc.health")):
                continue
            service = pool.FindServiceByName(service_name)
            methods += [
                m for m in service.methods if not m.client_streaming and not m.server_streaming
            ]
        return methods
    finally:
        channel.close()


class HealthWatch:
    """Checks a server's health every 100 ms on a thread; remembers the slowest."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self.slowest = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self._stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError as e:
                self.failures.append(f"{e.code()}")  # type: ignore[attr-defined]
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self._stop.wait(0.1)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._channel.close()


def _fuzz_method(target: Target, method: MethodDescriptor, failures: list[str]) -> None:
    request_class = message_factory.GetMessageClass(method.input_type)
    channel = grpc.insecure_channel(target.address)
    path = f"/{method.containing_service.full_name}/{method.name}"
    call: Callable[..., Any] = channel.unary_unary(
        path, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    started = time.monotonic()

    def send(payload: bytes) -> None:
        if time.monotonic() - started > SECONDS_PER_METHOD:
            return
        try:
            call(payload, metadata=(("authorization", f"Bearer {target.key}"),), timeout=10)
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            if code in FORBIDDEN or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                failures.append(f"{target.name} {path}: {code.name} {e.details()}"[:500])  # type: ignore[attr-defined]

    @settings(
        max_examples=EXAMPLES_PER_METHOD,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(values=_message(method.input_type, depth=3), data=st.data())
    def run(values: dict[str, Any], data: st.DataObject) -> None:
        message = request_class()
        _fill(message, values)
        valid = message.SerializeToString()
        send(valid)
        send(data.draw(_raw_variants(valid)))

    try:
        run()
    finally:
        channel.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Target]]:
    state = tmp_path_factory.mktemp("fuzz")
    admin = keys.generate().token
    plane = launch.start(f"sqlite:///{state / 'cp.db'}", bootstrap_key=admin)
    executor: Executor | None = None
    try:
        channel = grpc.insecure_channel(plane.address)
        md = (("authorization", f"Bearer {admin}"),)
        tenant_pb2_grpc.TenantServiceStub(channel).CreateTenant(
            tenant_pb2.CreateTenantRequest(tenant_id=TENANT, tenant=tenant_pb2.Tenant()),
            metadata=md,
        )
        api_keys = api_key_pb2_grpc.ApiKeyServiceStub(channel)

        def new_key(role: int, tenant: str = "") -> str:
            made = api_keys.CreateApiKey(
                api_key_pb2.CreateApiKeyRequest(
                    api_key=api_key_pb2.ApiKey(role=role, tenant=tenant)
                ),
                metadata=md,
            )
            return str(made.secret)

        executor_key = new_key(api_key_pb2.ROLE_EXECUTOR)
        operator = new_key(api_key_pb2.ROLE_OPERATOR, f"tenants/{TENANT}")
        channel.close()
        executor = launch_executor(
            plane.address,
            executor_key,
            node=f"fuzz-{secrets.token_hex(3)}",
            state_dir=state,
            run_store_url=f"sqlite:///{state / 'runs.db'}",
            log_level="ERROR",
        )
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(executor.address))
        deadline = time.monotonic() + 30
        while True:  # serving once its configuration (with the operator's key) is in
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        yield [
            Target("control plane", plane.address, admin, plane.process),
            Target("executor", executor.address, operator, executor.process),
        ]
    finally:
        if executor is not None:
            executor.stop_now(timeout=30)
        plane.stop()


@pytest.mark.timeout(600)
def test_no_request_makes_a_server_fail_or_stall(servers: list[Target]) -> None:
    failures: list[str] = []
    for target in servers:
        methods = _unary_methods(target.address)
        assert methods, f"the {target.name} lists no unary methods"
        with HealthWatch(target.address) as watch:
            for method in methods:
                _fuzz_method(target, method, failures)
                assert target.process.poll() is None, f"the {target.name} exited on {method.name}"
        assert watch.slowest < 1.0, f"the {target.name}'s health check took {watch.slowest:.2f} s"
        assert not watch.failures, watch.failures[:5]
    assert not failures, "\n".join(sorted(set(failures))[:30])
