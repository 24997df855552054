from controlplane.auth.cache import VerifiedKeys
from controlplane.auth.principal import Principal, Role


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = VerifiedKeys(5.0, clock=clock)
    principal = Principal("k1", Role.OPERATOR, "acme")
    cache.put("ph_token", principal, None)
    assert cache.get("ph_token") == (principal, None)
    assert cache.get("ph_other") is None
    clock.now = 5.1
    assert cache.get("ph_token") is None


def test_forgetting_a_key_drops_every_token_of_it() -> None:
    cache = VerifiedKeys(5.0, clock=Clock())
    cache.put("a", Principal("k1", Role.CLIENT, "acme"), None)
    cache.put("b", Principal("k2", Role.CLIENT, "acme"), None)
    cache.forget_key("k1")
    assert cache.get("a") is None and cache.get("b") is not None


def test_bounded_and_disabled() -> None:
    cache = VerifiedKeys(5.0, max_entries=2, clock=Clock())
    for token in ("a", "b", "c"):
        cache.put(token, Principal(token, Role.CLIENT, None), None)
    assert cache.get("a") is None and cache.get("c") is not None
    off = VerifiedKeys(0)
    off.put("a", Principal("a", Role.CLIENT, None), None)
    assert off.get("a") is None
