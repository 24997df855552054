"""Snapshots are built by a pure function: versioned by content, checked per tenant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controlplane.discovery.snapshot import Snapshot, build
from controlplane.registry import resources as r
from controlplane.registry.resources import Record
from controlplane.registry.service import RegistryContents, etag_of

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def rec(tenant: str, id_: str, spec: Any) -> Record[Any]:
    return Record(tenant, id_, spec, etag_of(spec), NOW, NOW)


def contents(revision: int, *, label_target: str = "p/0123456789abcdef") -> RegistryContents:
    t = "acme"
    labelled = "tenants/acme/prompts/" + label_target.replace("/", "/versions/")
    version = r.PromptVersion(template="hi", model_route="tenants/acme/modelRoutes/default")
    return RegistryContents(
        revision,
        (rec(t, t, r.Tenant()),),
        {
            "Model": (rec(t, "m", r.Model(provider=r.ModelProvider.SCRIPTED)),),
            "ModelRoute": (
                rec(
                    t,
                    "default",
                    r.ModelRoute(targets=(r.ModelRouteTarget("tenants/acme/models/m", 1),)),
                ),
            ),
            "PromptVersion": (
                rec(t, "p/0123456789abcdef", version),
                rec(t, "p/ffffffffffffffff", version),  # unlabelled: not shipped
            ),
            "Prompt": (
                rec(
                    t,
                    "p",
                    r.Prompt(labels={"production": labelled}),
                ),
            ),
            "Agent": (rec(t, "a", r.Agent(prompt="tenants/acme/prompts/p")),),
        },
    )


def test_versions_follow_content_and_unused_versions_stay_home() -> None:
    first, held = build(contents(1))
    assert held == {}
    again, _ = build(contents(2))
    assert again.version == first.version, "same content, same version"
    assert [v.id for v in first.records("PromptVersion", None)] == ["p/0123456789abcdef"]
    assert [q.id for q in first.records("QuotaPolicy", "acme")] == ["quotaPolicy"]
    assert first.records("Tool", "other") == []
    assert first.version_for("acme") != Snapshot(0).version_for("acme")


def test_an_inconsistent_tenant_keeps_its_previous_configuration() -> None:
    good, _ = build(contents(1))
    broken, held = build(contents(2, label_target="p/aaaaaaaaaaaaaaaa"), good)
    assert "acme" in held and "missing" in held["acme"][0]
    assert broken.version == good.version
    fresh, held = build(contents(3, label_target="p/aaaaaaaaaaaaaaaa"))
    assert "acme" not in fresh.tenants and held
