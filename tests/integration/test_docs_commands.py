"""The command blocks of the docs run as written, against a control plane of their own
(the examples name the tenant acme)."""

from __future__ import annotations

import re
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Live, start_live
from tests.integration.test_cli import cli

ROOT = Path(__file__).resolve().parents[2]


def commands(doc: Path, block: int) -> list[list[str]]:
    """The ``pilothouse`` commands of the ``block``-th fenced block of ``doc`` (from 0),
    continuation lines joined and comments dropped."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", doc.read_text(), re.M | re.S)
    text = blocks[block].replace("\\\n", " ")
    return [
        shlex.split(line, comments=True)
        for line in text.splitlines()
        if line.strip().startswith("pilothouse ")
    ]


@pytest.fixture
async def acme(tmp_path: Path) -> AsyncIterator[Live]:
    """A control plane of its own with the example manifests applied."""
    live = await start_live(f"sqlite:///{tmp_path / 'docs.db'}")
    try:
        applied = await cli(live, "apply", "-f", str(ROOT / "deploy/examples"))
        assert applied.code == 0, applied.err
        yield live
    finally:
        await live.channel.close()
        await live.plane.aclose()


async def test_the_rollout_example_runs_as_written(acme: Live) -> None:
    ran = []
    for argv in commands(ROOT / "docs/rollouts.md", 0):
        assert argv[0] == "pilothouse"
        if argv[1:3] == ["rollout", "watch"]:
            continue  # it follows the rollout to its end
        done = await cli(acme, *argv[1:])
        assert done.code == 0, (argv, done.err)
        ran.append((argv[1:3], done.out))
    assert [what for what, _ in ran] == [
        ["apply", "-f"],
        ["prompt", "versions"],
        ["rollout", "start"],
    ]
    # The id the docs use is the candidate's, as the listing shows it.
    listing = ran[1][1]
    assert re.search(r"^d9b4ecafd43eabbe\s.*-\s", listing, re.M), listing
    status = await cli(acme, "rollout", "status", "canary", "--tenant", "acme")
    assert status.code == 0 and "d9b4ecafd43eabbe" in status.out, status.out
