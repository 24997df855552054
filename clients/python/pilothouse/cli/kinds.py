"""The kinds the CLI knows, and the generic calls that serve each.

Every registry kind follows the contract's standard shape (``Get{Kind}Request(name)``,
``List{Kinds}Request(parent, page_size, page_token)``, ``Create{Kind}Request(parent,
{field}_id, {field})``, ``Update{Kind}Request({field}, update_mask)``,
``Delete{Kind}Request(name, etag)``), so one implementation drives them all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from pilothouse import kinds as table
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client
from pilothouse.kinds import ResourceKind

Column = tuple[str, Callable[[Any], str]]


def _age(message: Any) -> str:
    ts = message.update_time if message.HasField("update_time") else message.create_time
    if not ts.seconds:
        return "-"
    seconds = int((datetime.now(UTC) - ts.ToDatetime(tzinfo=UTC)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else ""


def _enum_short(message: Any, field_name: str) -> str:
    fd = message.DESCRIPTOR.fields_by_name[field_name]
    value = str(fd.enum_type.values_by_number[getattr(message, field_name)].name)
    prefix = _enum_prefix(fd.enum_type.name)
    return value[len(prefix) :].lower() if value.startswith(prefix) else value.lower()


def _enum_prefix(enum_name: str) -> str:
    out = ""
    for i, ch in enumerate(enum_name):
        if ch.isupper() and i:
            out += "_"
        out += ch.upper()
    return out + "_"


@dataclass(frozen=True)
class Kind:
    """A kind of the table (``pilothouse.kinds``) as the CLI shows and calls it."""

    entry: ResourceKind
    stub: str
    """The Client attribute holding the service's stub."""
    columns: list[Column] = field(default_factory=list)
    creatable: bool = True

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def plural(self) -> str:
        return self.entry.plural

    @property
    def request_field(self) -> str:
        return self.entry.field

    @property
    def aliases(self) -> tuple[str, ...]:
        return self.entry.cli_words

    @property
    def tenant_scoped(self) -> bool:
        """Listed and created under a tenant (``--tenant``)."""
        return self.entry.parent == "Tenant" and not self.entry.singleton

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self.entry.module)

    @property
    def message(self) -> type[Message]:
        cls: type[Message] = getattr(self.module, self.name)
        return cls

    def _method(self, client: Client, verb: str, plural: bool = False) -> Any:
        return getattr(getattr(client, self.stub), f"{verb}{self.plural if plural else self.name}")

    def _request(self, verb: str, plural: bool = False, **fields: Any) -> Message:
        cls = getattr(self.module, f"{verb}{self.plural if plural else self.name}Request")
        request: Message = cls(**fields)
        return request

    def name_of(self, tenant: str | None, id_: str) -> str:
        if "/" in id_:
            return id_
        if not self.tenant_scoped:
            return self.entry.name_of("", id_)
        if not tenant:
            raise UsageError(
                f"{self.name} {id_!r}: say which tenant (--tenant or PILOTHOUSE_TENANT)"
            )
        return self.entry.name_of(f"tenants/{tenant}", id_)

    async def get(self, client: Client, name: str) -> Any:
        response = await client.call(self._method(client, "Get"), self._request("Get", name=name))
        return getattr(response, self.request_field)

    async def list_all(self, client: Client, tenant: str | None, page_size: int = 500) -> list[Any]:
        fields: dict[str, Any] = {"page_size": page_size}
        if self.tenant_scoped:
            if not tenant:
                raise UsageError(f"listing {self.plural.lower()} needs a tenant (--tenant)")
            fields["parent"] = f"tenants/{tenant}"
        items: list[Any] = []
        token = ""
        while True:
            request = self._request("List", plural=True, page_token=token, **fields)
            response = await client.call(self._method(client, "List", plural=True), request)
            items += list(getattr(response, _snake(self.plural)))
            token = response.next_page_token
            if not token:
                return items

    async def create(self, client: Client, tenant: str | None, id_: str, message: Message) -> Any:
        fields: dict[str, Any] = {f"{self.request_field}_id": id_, self.request_field: message}
        if self.tenant_scoped:
            fields["parent"] = f"tenants/{tenant}"
        response = await client.call(
            self._method(client, "Create"), self._request("Create", **fields)
        )
        return getattr(response, self.request_field)

    async def update(self, client: Client, message: Message, paths: list[str]) -> Any:
        fields: dict[str, Any] = {
            self.request_field: message,
            "update_mask": field_mask_pb2.FieldMask(paths=paths),
        }
        request = self._request("Update", **fields)
        response = await client.call(self._method(client, "Update"), request)
        return getattr(response, self.request_field)

    async def delete(self, client: Client, name: str, etag: str = "") -> None:
        fields: dict[str, Any] = {"name": name}
        if etag:
            fields["etag"] = etag
        await client.call(self._method(client, "Delete"), self._request("Delete", **fields))


def _snake(camel: str) -> str:
    return _enum_prefix(camel).rstrip("_").lower()


NAME: Column = ("NAME", lambda m: _short(m.name))
AGE: Column = ("AGE", _age)

KINDS: list[Kind] = [
    Kind(table.kind("Tenant"), "tenants", [NAME, ("DISPLAY NAME", lambda m: m.display_name), AGE]),
    Kind(
        table.kind("QuotaPolicy"),
        "tenants",
        [
            ("TENANT", lambda m: m.name.split("/")[1]),
            ("USD/DAY", lambda m: m.usd_per_day if m.HasField("usd_per_day") else "-"),
            ("USD/MONTH", lambda m: m.usd_per_month if m.HasField("usd_per_month") else "-"),
            (
                "TOKENS/MIN",
                lambda m: str(m.tokens_per_minute) if m.HasField("tokens_per_minute") else "-",
            ),
            (
                "REQ/MIN",
                lambda m: str(m.requests_per_minute) if m.HasField("requests_per_minute") else "-",
            ),
            (
                "RUNS",
                lambda m: str(m.max_concurrent_runs) if m.HasField("max_concurrent_runs") else "-",
            ),
            (
                "ON OUTAGE",
                lambda m: _enum_short(m, "failure_mode") if m.failure_mode else "fail_closed",
            ),
        ],
        creatable=False,
    ),
    Kind(
        table.kind("Tool"),
        "tools",
        [
            NAME,
            ("KIND", lambda m: _enum_short(m, "kind")),
            ("ENDPOINT", lambda m: m.endpoint),
            ("APPROVAL", lambda m: _enum_short(m, "approval") if m.approval else "-"),
            AGE,
        ],
    ),
    Kind(
        table.kind("Model"),
        "models",
        [
            NAME,
            ("PROVIDER", lambda m: _enum_short(m, "provider")),
            ("IN $/M", lambda m: m.input_price_per_million),
            ("OUT $/M", lambda m: m.output_price_per_million),
            ("CONTEXT", lambda m: str(m.context_window)),
            AGE,
        ],
    ),
    Kind(
        table.kind("ModelRoute"),
        "models",
        [
            NAME,
            ("TARGETS", lambda m: ", ".join(f"{_short(t.model)}:{t.weight}" for t in m.targets)),
            ("FALLBACKS", lambda m: ", ".join(_short(f) for f in m.fallbacks) or "-"),
            AGE,
        ],
    ),
    Kind(
        table.kind("Prompt"),
        "prompts",
        [
            NAME,
            (
                "LABELS",
                lambda m: ", ".join(f"{k}={_short(v)}" for k, v in sorted(m.labels.items())) or "-",
            ),
            AGE,
        ],
    ),
    Kind(
        table.kind("Agent"),
        "agents",
        [
            NAME,
            (
                "PROMPT",
                lambda m: (
                    _short(m.prompt)
                    + "@"
                    + (_short(m.prompt_version) or m.prompt_label or "production")
                ),
            ),
            ("TOOLS", lambda m: ", ".join(_short(t) for t in m.tools) or "-"),
            AGE,
        ],
    ),
    Kind(
        table.kind("EvalSuite"),
        "evals",
        [
            NAME,
            ("AGENT", lambda m: _short(m.agent)),
            ("CASES", lambda m: str(len(m.cases))),
            AGE,
        ],
    ),
    Kind(
        table.kind("ApiKey"),
        "api_keys",
        [
            NAME,
            ("ROLE", lambda m: _enum_short(m, "role")),
            ("TENANT", lambda m: _short(m.tenant) or "*"),
            ("SCOPES", lambda m: ",".join(m.scopes) or "-"),
            ("DISPLAY NAME", lambda m: m.display_name),
            (
                "EXPIRES",
                lambda m: (
                    m.expire_time.ToDatetime(tzinfo=UTC).isoformat()
                    if m.HasField("expire_time")
                    else "never"
                ),
            ),
        ],
        creatable=False,
    ),
]


def find(word: str) -> Kind:
    lowered = word.lower()
    for kind in KINDS:
        if lowered in kind.aliases:
            return kind
    known = ", ".join(k.plural.lower() for k in KINDS)
    raise UsageError(f"unknown kind {word!r}; one of: {known}")


def by_manifest_kind(name: str) -> Kind | None:
    return next((k for k in KINDS if k.name == name), None)
