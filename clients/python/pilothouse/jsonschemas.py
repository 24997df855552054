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
    struct = _struct_form(schema)
    if struct is not None:
        return (
            f"is written in protobuf Struct's own encoding at /{'/'.join(struct)} "
            '("fields", "stringValue", …): give the JSON Schema itself, such as '
            '{"type": "object", "properties": {"order_id": {"type": "string"}}}'
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        at = f" at /{where}" if where else ""
        # The validator speaks Python (None, {'a': 1}); a user wrote JSON.
        shown = json.dumps(e.instance, default=str)
        message = e.message.replace(repr(e.instance), shown, 1)
        return f"is not a valid JSON Schema (draft 2020-12){at}: {message}"
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


_STRUCT_VALUES: dict[str, tuple[type, ...]] = {
    "stringValue": (str,),
    "numberValue": (int, float),
    "boolValue": (bool,),
    "nullValue": (str, int, type(None)),
    "structValue": (dict,),
    "listValue": (dict,),
}
"""protobuf Struct's ``Value`` fields, by their JSON names, and what each holds."""


def _is_struct_value(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    ((key, inner),) = value.items()
    name = key if key in _STRUCT_VALUES else _camel(key)
    return name in _STRUCT_VALUES and isinstance(inner, _STRUCT_VALUES[name])


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _struct_form(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where protobuf's Struct encoding (``{"fields": {"type": {"stringValue": …}}}``)
    stands for a JSON Schema's own JSON, or None: a client that built the Struct by
    hand."""
    if isinstance(value, dict):
        fields = value.get("fields")
        if (
            set(value) == {"fields"}
            and isinstance(fields, dict)
            and fields
            and all(_is_struct_value(v) for v in fields.values())
        ):
            return (*path, "fields")
        if _is_struct_value(value):
            return path
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for name, item in items:
        found = _struct_form(item, (*path, str(name)))
        if found is not None:
            return found
    return None
