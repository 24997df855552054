import pytest

from controlplane.errors import InvalidArgument
from controlplane.registry import names
from controlplane.registry import resources as r
from controlplane.registry.masks import apply_mask
from controlplane.registry.pagination import decode_token, encode_token, page_size, paginate


@pytest.mark.parametrize("good", ["a", "acme", "a-1", "x" * 63])
def test_valid_ids(good: str) -> None:
    assert names.check_id(good, "f") == good


@pytest.mark.parametrize("bad", ["", "A", "1a", "a-", "a_b", "x" * 64, "a/b"])
def test_invalid_ids(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        names.check_id(bad, "tool_id")
    assert info.value.violations[0].field == "tool_id"


def test_parse_names() -> None:
    assert names.parse_child("tenants/a/tools/t", "tools", "name") == names.ChildName("a", "t")
    with pytest.raises(InvalidArgument):
        names.parse_child("tenants/a/models/t", "tools", "name")
    v = names.parse_version("tenants/a/prompts/p/versions/0123456789abcdef", "name")
    assert (v.tenant, v.prompt, v.version) == ("a", "p", "0123456789abcdef")
    with pytest.raises(InvalidArgument):
        names.parse_version("tenants/a/prompts/p/versions/production", "name")
    assert names.tenant_of("tenants/x/tools/y") == "x"
    assert names.tenant_of("apiKeys/k") is None


def test_mask_replaces_named_fields_only() -> None:
    existing = r.Agent(
        description="old", tools=("t",), default_budget=r.Budget(max_steps=3, max_tool_calls=9)
    )
    incoming = r.Agent(description="new", default_budget=r.Budget(max_steps=5))
    result = apply_mask(existing, incoming, ["default_budget.max_steps"], output_only=frozenset())
    assert result.default_budget == r.Budget(max_steps=5, max_tool_calls=9)
    assert result.description == "old" and result.tools == ("t",)
    everything = apply_mask(existing, incoming, [], output_only=frozenset())
    assert everything == incoming


def test_mask_refuses_unknown_and_output_only_paths() -> None:
    with pytest.raises(InvalidArgument):
        apply_mask(r.Agent(), r.Agent(), ["nope"], output_only=frozenset())
    with pytest.raises(InvalidArgument):
        apply_mask(r.Agent(), r.Agent(), ["description.deeper"], output_only=frozenset())
    with pytest.raises(InvalidArgument):
        apply_mask(r.Prompt(), r.Prompt(), ["labels"], output_only=frozenset({"labels"}))
    kept = apply_mask(
        r.Prompt(labels={"production": "v"}),
        r.Prompt(description="d"),
        [],
        output_only=frozenset({"labels"}),
    )
    assert kept.labels == {"production": "v"} and kept.description == "d"


def test_page_sizes() -> None:
    assert page_size(0) == 50
    assert page_size(5000) == 1000
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_tokens_are_bound_to_their_collection() -> None:
    token = encode_token("tenants/a/tools", "t-05")
    assert decode_token(token, "tenants/a/tools") == "t-05"
    assert decode_token("", "tenants/a/tools") == ""
    with pytest.raises(InvalidArgument):
        decode_token(token, "tenants/b/tools")
    with pytest.raises(InvalidArgument):
        decode_token("%%%", "tenants/a/tools")


def test_paginate() -> None:
    page, token = paginate(["a", "b", "c"], 2, "c", str)
    assert page == ["a", "b"] and decode_token(token, "c") == "b"
    assert paginate(["a"], 2, "c", str) == (["a"], "")
