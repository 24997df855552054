"""The Kubernetes manifests (deploy/k8s): every one parses, names resolve between objects
(selectors, services, config maps, ports, probes), secrets are only referenced, and the
Envoy bootstrap inside is what `pilothouse deploy envoy` writes for the flags it names.

The base is read as it is; the overlays are rendered by `kubectl kustomize` where kubectl
is installed."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilothouse.cli.__main__ import build_parser
from pilothouse.cli.deploy import sidecar
from pilothouse.deploy.envoy import render

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
SECRETS = {
    "pilothouse-database",
    "pilothouse-bootstrap-key",
    "pilothouse-executor-key",
    "pilothouse-run-store",
    "pilothouse-executor-tls",
}
"""Made by the operator, never shipped; docs/deploy.md says what each holds."""

Obj = dict[str, Any]


def base_objects() -> list[Obj]:
    """The base as kustomize would put it together, generated config maps included."""
    base = K8S / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    objects: list[Obj] = []
    for resource in kustomization["resources"]:
        objects += [d for d in yaml.safe_load_all((base / resource).read_text()) if d]
    for generator in kustomization["configMapGenerator"]:
        data = {}
        for item in generator["files"]:
            key, _, path = item.partition("=")
            data[key] = (base / (path or key)).read_text()
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    for label in kustomization.get("labels", []):
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates") and o["kind"] == "Deployment":
                o["spec"]["template"]["metadata"]["labels"].update(label["pairs"])
    return objects


def rendered(overlay: str) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays are rendered with kubectl kustomize")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def of(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    """By name; a generated config map's name carries a hash suffix once rendered."""
    for o in of(objects, kind):
        n = o["metadata"]["name"]
        if n == name or (kind == "ConfigMap" and n.rsplit("-", 1)[0] == name):
            return o
    raise AssertionError(f"no {kind} {name}")


def pods(objects: list[Obj]) -> list[tuple[str, Obj]]:
    return [(d["metadata"]["name"], d["spec"]["template"]) for d in of(objects, "Deployment")]


def selects(selector: dict[str, str], template: Obj) -> bool:
    labels = template["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in selector.items())


def container_ports(template: Obj) -> dict[Any, int]:
    ports: dict[Any, int] = {}
    for c in template["spec"]["containers"]:
        for p in c.get("ports", []):
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def container(objects: list[Obj], deployment: str, name: str) -> Obj:
    template = named(objects, "Deployment", deployment)["spec"]["template"]
    return next(c for c in template["spec"]["containers"] if c["name"] == name)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def check(objects: list[Obj]) -> None:
    for o in objects:
        assert o.get("apiVersion") and o.get("kind") and o["metadata"].get("name"), o
        assert o["kind"] != "Secret", f"{o['metadata']['name']}: secrets are referenced only"
    config_maps = {o["metadata"]["name"] for o in of(objects, "ConfigMap")}
    referenced_secrets: set[str] = set()
    for name, template in pods(objects):
        deployment = named(objects, "Deployment", name)
        assert selects(deployment["spec"]["selector"]["matchLabels"], template), name
        spec = template["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"], (name, c["name"])
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced_secrets.add(ref["name"])
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (name, volume)
            if "secret" in volume:
                referenced_secrets.add(volume["secret"]["secretName"])
        mounts = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in spec.get("volumes", [])}, name
        ports = container_ports(template)
        for c in spec["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in c:
                    how = c[probe].get("grpc") or c[probe].get("httpGet")
                    assert how["port"] in ports, (name, c["name"], probe)
    assert referenced_secrets == SECRETS
    for service in of(objects, "Service"):
        matched = [t for _, t in pods(objects) if selects(service["spec"]["selector"], t)]
        assert matched, f"service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            assert all(port["targetPort"] in container_ports(t) for t in matched), port
    for policy in of(objects, "NetworkPolicy"):
        selected = [
            t for _, t in pods(objects) if selects(policy["spec"]["podSelector"]["matchLabels"], t)
        ]
        assert selected, policy["metadata"]["name"]
        for rule in policy["spec"]["ingress"]:
            for source in rule.get("from", []):
                labels = source["podSelector"]["matchLabels"]
                assert any(selects(labels, t) for _, t in pods(objects)), (policy, source)
            for port in rule.get("ports", []):
                assert all(port["port"] in container_ports(t) for t in selected), (policy, port)
    budget = named(objects, "PodDisruptionBudget", "pilothouse-control-plane")
    cp = named(objects, "Deployment", "pilothouse-control-plane")
    assert selects(budget["spec"]["selector"]["matchLabels"], cp["spec"]["template"])
    assert cp["spec"]["replicas"] >= 2 and budget["spec"]["minAvailable"] < cp["spec"]["replicas"]
    assert cp["spec"]["template"]["spec"]["initContainers"][0]["command"][-1] == "migrate"
    check_sidecar(objects)


def generated_by_its_flags(text: str) -> Obj:
    """A sidecar bootstrap whose first line gives the flags it was generated with,
    checked to be what they generate now; as data."""
    first, _, body = text.partition("\n")
    assert first.startswith("# pilothouse deploy envoy ")
    args = shlex.split(first.removeprefix("# pilothouse "))
    assert body == render(sidecar(build_parser().parse_args(args))), "regenerate it"
    data: Obj = yaml.safe_load(body)
    return data


def check_sidecar(objects: list[Obj]) -> None:
    """The executor, its sidecar's bootstrap and the services agree on every address."""
    envoy = generated_by_its_flags(
        named(objects, "ConfigMap", "executor-envoy")["data"]["envoy.yaml"]
    )
    listeners = {x["name"]: x for x in envoy["static_resources"]["listeners"]}
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}

    def port_of(thing: Obj) -> tuple[str, int]:
        address = thing["address"]["socket_address"]
        return address["address"], address["port_value"]

    def endpoint(cluster: str) -> tuple[str, int]:
        lb = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        return port_of(lb["endpoint"])

    executor = container(objects, "pilothouse-executor", "executor")["command"]
    assert flag(executor, "--listen") == ":".join(map(str, endpoint("executor")))
    egress = port_of(listeners["egress_control_plane"])
    assert flag(executor, "--control-plane") == ":".join(map(str, egress))
    cp_service = named(objects, "Service", "pilothouse-control-plane")
    host, port = endpoint("control_plane")
    assert host.split(".")[0] == cp_service["metadata"]["name"]
    assert port == cp_service["spec"]["ports"][0]["port"]
    sidecar_container = container(objects, "pilothouse-executor", "envoy")
    ports = {p["name"]: p["containerPort"] for p in sidecar_container["ports"]}
    assert ports["grpc"] == port_of(listeners["ingress"])[1]
    assert ports["health"] == port_of(listeners["health"])[1]
    assert sidecar_container["readinessProbe"]["grpc"]["port"] == ports["health"]
    collector = named(objects, "Service", "otel-collector")
    host, port = endpoint("otel_collector")
    assert host == collector["metadata"]["name"]
    assert port in {p["port"] for p in collector["spec"]["ports"]}
    for deployment, name in (
        ("pilothouse-control-plane", "control-plane"),
        ("pilothouse-executor", "executor"),
    ):
        env = {e["name"]: e.get("value") for e in container(objects, deployment, name)["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{port}"


def test_the_base_resolves() -> None:
    check(base_objects())


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_an_overlay_renders_and_resolves(overlay: str) -> None:
    objects = rendered(overlay)
    check(objects)
    executors = named(objects, "Deployment", "pilothouse-executor")["spec"]["replicas"]
    assert executors == {"dev": 1, "prod": 4}[overlay]
    text = named(objects, "ConfigMap", "executor-envoy")["data"]["envoy.yaml"]
    assert ("--client-ca" in text.partition("\n")[0]) == (overlay == "prod")


def test_the_docs_name_every_secret() -> None:
    text = DOCS.read_text()
    for secret in SECRETS:
        assert f"`{secret}`" in text, secret
