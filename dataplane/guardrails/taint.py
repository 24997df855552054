"""Taint: what untrusted content may make a run do.

Every tool's output is untrusted (marked, and tainting the run) unless the executor knows
it cannot carry someone else's text (the calculator and the clock) or the operator vouches
for it (``Tool.trusted_output``): data from an internal system can still hold a
customer's words. Once a run is tainted, a call to a tool that reaches outside (its
effective open-world hint: unset means true, as MCP defines; builtins never reach
outside) waits for a person unless the agent allows that tool, and the arguments of any
such call are screened: a value repeated from the run's untrusted content, or personal
data where the agent's policy redacts it, sends the call to a person whatever the policy.
The defence is the policy, not a list of phrases: a keyword screen cannot know every
language or encoding an instruction may come in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dataplane.guardrails import pii
from pilothouse.v1 import tool_pb2

TRUSTED_BUILTINS = frozenset({"calculator", "clock"})
MIN_ECHOED = 8
"""Characters an argument value must have before its presence in untrusted content
counts (shorter ones, such as "yes" or an order id's prefix, occur anywhere)."""


def trusted_output(tool: tool_pb2.Tool) -> bool:
    return tool.trusted_output or (
        tool.kind == tool_pb2.TOOL_KIND_BUILTIN and tool.endpoint in TRUSTED_BUILTINS
    )


def open_world(tool: tool_pb2.Tool) -> bool:
    """Whether a call may reach outside: the effective MCP open-world hint."""
    if tool.kind == tool_pb2.TOOL_KIND_BUILTIN:
        return False
    hints = tool.annotations
    return not hints.HasField("open_world_hint") or hints.open_world_hint


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}/{index}")
    elif isinstance(value, str):
        yield path or "/", value


def screen_arguments(arguments: Any, untrusted: Sequence[str], *, private: bool) -> str:
    """Why the arguments of a call that reaches outside must be seen by a person first,
    or "": a value taken from untrusted tool output, or (``private``: the agent's policy
    redacts personal data) personal data."""
    for path, value in _leaves(arguments):
        found = pii.find(value[:65_536]) if private else []
        if found:
            kinds = ", ".join(sorted({f.kind.lower() for f in found}))
            return f"argument {path} carries personal data ({kinds})"
        if len(value) >= MIN_ECHOED and any(value in text for text in untrusted):
            return f"argument {path} repeats text from untrusted tool output"
    return ""
