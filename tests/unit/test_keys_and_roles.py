import pytest

from controlplane.api.permissions import METHOD_PERMISSIONS
from controlplane.auth import keys
from controlplane.auth.principal import Permission, Principal, Role
from controlplane.errors import PermissionDenied
from controlplane.server import SERVICE_NAMES


def test_generated_keys_parse_and_verify() -> None:
    material = keys.generate()
    parsed = keys.parse(material.token)
    assert parsed == material
    stored = keys.hash_secret(material.secret)
    assert keys.secret_matches(material.secret, stored)
    assert not keys.secret_matches(keys.generate().secret, stored)
    assert keys.parse("ph_short_x") is None
    assert keys.generate() != keys.generate()


def test_scoped_principal() -> None:
    operator = Principal("k", Role.OPERATOR, "acme")
    operator.require(Permission.REGISTRY_WRITE)
    operator.require_tenant("acme")
    with pytest.raises(PermissionDenied):
        operator.require_tenant("globex")
    with pytest.raises(PermissionDenied):
        operator.require(Permission.TENANT_ADMIN)
    with pytest.raises(PermissionDenied):
        Principal("c", Role.CLIENT, "acme").require(Permission.REGISTRY_READ)
    Principal("a", Role.ADMIN, None).require_tenant("anything")


def test_every_method_of_the_contract_has_a_permission() -> None:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    methods = {
        f"/{name}/{m.name}" for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods
    }
    assert methods == set(METHOD_PERMISSIONS)
