"""deploy/compose.yaml: it parses, every service, file and host it names is there, and the
sidecars' bootstrap is what its flags generate and agrees with the executors' flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_k8s_manifests import flag, generated_by_its_flags

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_every_name_the_compose_file_uses_is_there() -> None:
    services = compose()["services"]
    assert {"postgres", "otel-collector", "jaeger"} <= set(services)
    control_planes = [n for n in services if n.startswith("control-plane-")]
    executors = [n for n in services if n.startswith("executor-")]
    assert len(control_planes) == 2 and len(executors) == 2
    for name, service in services.items():
        needs = service.get("depends_on", [])
        for other in needs if isinstance(needs, list) else list(needs):
            assert other in services, (name, other)
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in executors, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), (name, source)
        for key, value in service.get("environment", {}).items():
            if isinstance(value, str) and "://" in value:
                host = value.split("://")[1].split("@")[-1].split(":")[0].split("/")[0]
                assert host in services, (name, key, value)
    sidecars = [n for n, s in services.items() if s.get("network_mode", "").startswith("service:")]
    assert sorted(
        s["network_mode"].removeprefix("service:") for s in (services[n] for n in sidecars)
    ) == sorted(executors)


def test_the_sidecars_bootstrap_agrees_with_the_executors_and_control_planes() -> None:
    services = compose()["services"]
    envoy = generated_by_its_flags((DEPLOY / "compose" / "envoy.yaml").read_text())
    listeners = {
        x["name"]: x["address"]["socket_address"] for x in envoy["static_resources"]["listeners"]
    }
    clusters = {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]
        for c in envoy["static_resources"]["clusters"]
    }
    for name in ("executor-a", "executor-b"):
        command = services[name]["command"]
        executor = clusters["executor"]
        assert flag(command, "--listen") == f"{executor['address']}:{executor['port_value']}"
        egress = listeners["egress_control_plane"]
        assert flag(command, "--control-plane") == f"{egress['address']}:{egress['port_value']}"
        ingress = str(listeners["ingress"]["port_value"])
        assert [p.split(":")[1] for p in services[name]["ports"]] == [ingress]
    for name in ("control-plane-a", "control-plane-b"):
        cp = services[name]
        assert clusters["control_plane"]["address"] in cp["networks"]["default"]["aliases"]
        assert (
            flag(cp["command"], "--listen") == f"0.0.0.0:{clusters['control_plane']['port_value']}"
        )
    assert clusters["otel_collector"]["address"] in services
    collector = services["otel-collector"]["environment"]["OTLP_TRACES_ENDPOINT"]
    assert collector.split(":-")[1].split(":")[0] in services
