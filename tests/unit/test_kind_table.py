"""The one table of resource kinds, and everything that reads it agreeing with it."""

from __future__ import annotations

import importlib

from controlplane.api import ads
from controlplane.discovery.snapshot import KIND_ORDER
from controlplane.registry import kinds as registry
from dataplane.config.snapshot import MESSAGES
from pilothouse.cli import kinds as cli
from pilothouse.kinds import BY_NAME, DELIVERED, KINDS


def test_every_kind_has_its_message_in_the_contract() -> None:
    for kind in KINDS:
        module = importlib.import_module(kind.module)
        message = getattr(module, kind.name)
        assert message.DESCRIPTOR.full_name == f"pilothouse.v1.{kind.name}"
        assert kind.type_url == f"type.googleapis.com/pilothouse.v1.{kind.name}"
        assert kind.parent in ("", *BY_NAME), kind


def test_executors_get_the_delivered_kinds_in_the_tables_order() -> None:
    names = [k.name for k in DELIVERED]
    assert list(KIND_ORDER) == names == list(MESSAGES)
    assert names.index("Tool") < names.index("Agent") and names.index("Prompt") < names.index(
        "Rollout"
    ), "what is referred to comes before what refers to it"
    for kind in DELIVERED:
        assert MESSAGES[kind.name].DESCRIPTOR.name == kind.name
        assert ads.to_proto(kind).__name__ == f"{kind.field}_to_proto"


def test_the_registry_and_the_cli_place_kinds_where_the_table_does() -> None:
    for kind in (*registry.TENANT_SCOPED.values(), registry.TENANT, registry.QUOTA_POLICY):
        entry = BY_NAME[kind.name]
        assert (kind.collection, kind.request_field) == (entry.collection, entry.field)
    for shown in cli.KINDS:
        assert cli.find(shown.plural.lower()) is shown
        assert shown.message.DESCRIPTOR.name == shown.name
    assert cli.find("routes").name == "ModelRoute" and cli.find("quota").name == "QuotaPolicy"
    assert cli.find("tool").name_of("acme", "lookup") == "tenants/acme/tools/lookup"
    assert cli.find("quota").name_of(None, "acme") == "tenants/acme/quotaPolicy"
    assert cli.find("keys").name_of(None, "k1") == "apiKeys/k1"
    assert cli.find("tenants").name_of(None, "acme") == "tenants/acme"
    assert BY_NAME["PromptVersion"].name_of("tenants/a/prompts/p", "v1") == (
        "tenants/a/prompts/p/versions/v1"
    )
