"""What a run may answer: the agent's output schema (one repair allowed), its blocked
patterns, and personal data redacted when its policy says so."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dataplane.guardrails import pii
from pilothouse import jsonschemas, patterns
from pilothouse.v1 import agent_pb2

REPAIR_PREFIX = "Your final answer does not satisfy the required output schema."
"""Opens the message asking the model to repair its answer (a run has one repair)."""


@dataclass(frozen=True)
class Verdict:
    answer: str = ""
    """The answer to give (redacted when the policy says so)."""
    repair: str = ""
    """Ask the model this, once, and judge its next answer instead."""
    blocked: str = ""
    """The guardrail that blocks the answer (no answer is given)."""
    invalid: str = ""
    """Why the answer does not satisfy the schema, after its repair."""


def schema_problem(validator: Any, answer: str) -> tuple[str, str]:
    """Why ``answer`` is not JSON satisfying the schema, told to the model (which may
    quote the answer) and for the record (which never does); empty when it is."""
    try:
        value = jsonschemas.parse_document(answer)
    except json.JSONDecodeError as e:
        told = f"it is not JSON ({e.msg} at line {e.lineno} column {e.colno})"
        return told, told
    except ValueError as e:
        told = f"it is not usable JSON: {e}"
        return told, told
    error = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(e.path))), None)
    if error is None:
        return "", ""
    where = "/".join(str(p) for p in error.absolute_path) or "(the top level)"
    return f"at {where}: {error.message}", f"at {where}: fails the schema's {error.validator!r}"


def judge(
    agent: agent_pb2.Agent,
    validator: Any,
    answer: str,
    *,
    repaired: bool,
) -> Verdict:
    """The final answer's fate. ``repaired``: the run already had its repair."""
    if validator is not None:
        problem, recorded = schema_problem(validator, answer)
        if problem and not repaired:
            schema = json.dumps(validator.schema, separators=(",", ":"))
            return Verdict(
                repair=f"{REPAIR_PREFIX} Problem: {problem}. Reply with only the corrected "
                f"JSON, which must satisfy this JSON Schema: {schema}"
            )
        if problem:
            return Verdict(invalid=recorded)
    policy = agent.guardrail_policy
    for i, pattern in enumerate(policy.blocked_patterns):
        if patterns.search(pattern, answer):
            return Verdict(blocked=f"blocked_patterns[{i}] matched the final answer")
    return Verdict(answer=pii.redact(answer) if policy.redact_pii else answer)
