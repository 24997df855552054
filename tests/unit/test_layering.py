"""Imports flow one way: api → domain → store; controlplane, dataplane and the Python
client never import each other (they may share storekit, which knows none of them);
only the API edge touches generated stubs or grpc."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str) -> dict[Path, set[str]]:
    base = ROOT / package if package != "pilothouse" else ROOT / "clients/python/pilothouse"
    return {p: _imports(p) for p in base.rglob("*.py") if "/v1/" not in str(p)}


def _offenders(package: str, sub: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(ROOT)} imports {name}"
        for p, names in _modules(package).items()
        if f"/{sub}/" in str(p) or sub == "*"
        for name in names
        if name.startswith(forbidden)
    ]


def test_packages_meet_only_at_the_contract() -> None:
    assert _offenders("controlplane", "*", ("dataplane",)) == []
    assert _offenders("dataplane", "*", ("controlplane",)) == []
    assert _offenders("pilothouse", "*", ("controlplane", "dataplane")) == []


def test_storekit_serves_both_and_knows_neither() -> None:
    assert _offenders("storekit", "*", ("controlplane", "dataplane", "pilothouse", "grpc")) == []


def test_store_knows_nothing_above_it() -> None:
    above = ("controlplane.api", "controlplane.registry", "controlplane.auth", "grpc", "pilothouse")
    # The audit chain's hash format is part of the contract, as the protos are, but plain
    # Python: the store writes records in it (and a migration chained the old ones).
    offenders = _offenders("controlplane", "store", above)
    assert [o for o in offenders if not o.endswith(" imports pilothouse.auditchain")] == []


def test_domain_does_not_speak_protobuf() -> None:
    edge = ("grpc", "pilothouse.v1", "google.protobuf", "google.rpc", "controlplane.api")
    assert _offenders("controlplane", "registry", edge) == []
    assert _offenders("controlplane", "auth", edge) == []
