"""Rollout assignment: the documented vectors, stickiness, monotone weights, and shares
close to the weight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pilothouse.assignment import BUCKETS, Stickiness, bucket, in_candidate, unit_key

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "docs/rollout-assignment-vectors.json").read_text()
)


@pytest.mark.parametrize("v", VECTORS["buckets"], ids=lambda v: f"{v['rollout']}|{v['key']}")
def test_buckets_match_the_documented_vectors(v: dict[str, object]) -> None:
    assert bucket(str(v["rollout"]), str(v["key"])) == v["bucket"]


@pytest.mark.parametrize("v", VECTORS["keys"], ids=lambda v: str(v["key"]))
def test_unit_keys_match_the_documented_vectors(v: dict[str, str]) -> None:
    key = unit_key(
        Stickiness(v["stickiness"]),
        tenant=v["tenant"],
        user=v["user"],
        session=v["session"],
        run=v["run"],
    )
    assert key == v["key"]


def test_weights_are_monotone_and_shares_follow_them() -> None:
    rollout = "tenants/acme/rollouts/monotone"
    units = [f"session:{n}" for n in range(20_000)]
    previous: set[str] = set()
    for weight in (0, 500, 2500, 5000, 10_000):
        chosen = {u for u in units if in_candidate(rollout, u, weight)}
        assert previous <= chosen, "raising the weight moved a unit out of the candidate"
        assert abs(len(chosen) / len(units) - weight / BUCKETS) < 0.01
        previous = chosen
    with pytest.raises(ValueError):
        in_candidate(rollout, units[0], BUCKETS + 1)
