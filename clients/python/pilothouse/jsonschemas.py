"""JSON Schemas that tenants write (tool inputs, agents' outputs, eval expectations):
checked by the control plane and run by executors with the same rules.

Validation is jsonschema's draft 2020-12, except that ``pattern``, ``patternProperties``
and ``additionalProperties`` (which consults ``patternProperties``) match on RE2
(``pilothouse.patterns``): a tenant's pattern never runs on a backtracking engine.
``unevaluatedProperties`` next to ``patternProperties`` in one schema is refused, since
jsonschema would match those patterns with Python's ``re``. Documents are bounded in depth
before they are validated, so that validation's recursion is bounded too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError

from pilothouse import patterns

MAX_SCHEMA_DEPTH = 32
"""Nesting of a schema's objects and arrays."""
MAX_SCHEMA_BYTES = 64 * 1024
"""A schema's size as compact JSON."""
MAX_DOCUMENT_DEPTH = 64
"""Nesting of a document validated against a schema (tool arguments, an answer)."""


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not patterns.search(pattern, instance):
        yield ValidationError(f"{instance[:80]!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, pattern_properties: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if patterns.search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    matchers = list(schema.get("patternProperties", {}))
    extras = [
        key
        for key in instance
        if key not in properties and not any(patterns.search(p, key) for p in matchers)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if matchers:
            yield ValidationError(
                f"{', '.join(sorted(repr(e) for e in extras)[:5])} do not match any of the "
                f"patterns {', '.join(repr(p) for p in sorted(matchers))}"
            )
        else:
            listed = ", ".join(repr(e) for e in sorted(extras)[:5])
            yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


Validator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    validators={
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
"""Draft 2020-12 with tenants' patterns on RE2."""


def validator(schema: dict[str, Any]) -> Any:
    """A validator of documents against ``schema`` (one that ``problem`` passed)."""
    return Validator(schema)


def depth(value: Any, limit: int) -> int:
    """The nesting depth of a JSON value, counted without recursion and no further than
    ``limit + 1`` (so a hostile document costs no more than its size to measure)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` may not be used, or None: not valid draft 2020-12, too deep or too
    large, a pattern RE2 refuses, or unevaluatedProperties next to patternProperties."""
    if depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        return f"nests deeper than {MAX_SCHEMA_DEPTH} levels"
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        return f"is {size} bytes as JSON; at most {MAX_SCHEMA_BYTES}"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        at = f" at /{where}" if where else ""
        return f"is not a valid JSON Schema (draft 2020-12){at}: {e.message}"
    found = list(patterns.schema_patterns(schema))
    for where, pattern in found:
        why = patterns.problem(pattern)
        if why is not None:
            return f"has a pattern at {where} that {why}"
    text = json.dumps(schema)
    if found and '"unevaluatedProperties"' in text and '"patternProperties"' in text:
        return "may not use unevaluatedProperties together with patternProperties"
    return None


def parse_document(text: str | bytes) -> Any:
    """JSON text as a document to validate: ``ValueError`` when it is not JSON or nests
    deeper than ``MAX_DOCUMENT_DEPTH`` (a parser's recursion error included)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"it nests deeper than {MAX_DOCUMENT_DEPTH} levels") from None
    if depth(value, MAX_DOCUMENT_DEPTH) > MAX_DOCUMENT_DEPTH:
        raise ValueError(f"it nests deeper than {MAX_DOCUMENT_DEPTH} levels")
    return value
