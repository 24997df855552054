"""Field checks shared by the registry's kinds. Each appends what is wrong to a list of
violations, so that one response names every bad field at once."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from controlplane.errors import FieldViolation, InvalidArgument
from controlplane.registry.names import ID_PATTERN, ID_RULE
from pilothouse import jsonschemas, patterns


@lru_cache(maxsize=4096)
def _schema_problem(schema_json: str) -> str:
    """Why a schema (as canonical JSON) may not be used, or "" if it may: the rules
    executors validate by (``pilothouse.jsonschemas``). Memoised: checking a schema
    against the metaschema costs about a millisecond, and the same schemas come back with
    every apply."""
    return jsonschemas.problem(json.loads(schema_json)) or ""


MAX_URL = 2048


class Violations:
    """Collects field violations; ``raise_if_any`` turns them into INVALID_ARGUMENT."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        path = f"{self.prefix}.{field}" if self.prefix and field else (self.prefix or field)
        self.items.append(FieldViolation(path, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    def id(self, field: str, value: str) -> None:
        if not ID_PATTERN.match(value):
            self.add(field, f"{value!r} {ID_RULE}")

    def text(self, field: str, value: str, *, max_len: int, required: bool = False) -> None:
        if required and not value.strip():
            self.add(field, "is required")
        elif len(value) > max_len:
            self.add(field, f"must be at most {max_len} characters (is {len(value)})")

    def json_schema(
        self, field: str, schema: dict[str, Any] | None, *, require_object: bool = False
    ) -> None:
        if schema is None or not schema:
            if require_object:
                self.add(field, 'is required (a JSON Schema such as {"type": "object"})')
            return
        problem = _schema_problem(json.dumps(schema, sort_keys=True))
        if problem:
            self.add(field, problem)
            return
        if require_object and schema.get("type") != "object":
            self.add(field, 'must describe an object ("type": "object")')

    def count(self, field: str, values: tuple[Any, ...] | list[Any], *, maximum: int) -> None:
        if len(values) > maximum:
            self.add(field, f"may hold at most {maximum} (holds {len(values)})")

    def json_size(self, field: str, value: Any, *, max_bytes: int) -> None:
        """A free-form JSON value (tool-call arguments, metadata) of at most ``max_bytes``."""
        size = len(json.dumps(value, separators=(",", ":"), default=str))
        if size > max_bytes:
            self.add(field, f"is {size} bytes as JSON; at most {max_bytes}")

    def url(self, field: str, value: str, *, required: bool) -> None:
        if not value:
            if required:
                self.add(field, "is required")
            return
        if len(value) > MAX_URL:
            self.add(field, f"must be at most {MAX_URL} characters (is {len(value)})")
            return
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.add(field, f"{value!r} is not an http:// or https:// URL")

    def non_negative(self, field: str, value: int | Decimal | None) -> None:
        if value is not None and value < 0:
            self.add(field, f"must be at least 0 (is {value})")

    def decimal_places(self, field: str, value: Decimal, places: int) -> None:
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > places:
            self.add(field, f"may have at most {places} decimal places (is {value})")

    def duration(self, field: str, value: timedelta | None, *, maximum: timedelta) -> None:
        if value is None:
            return
        if value <= timedelta(0):
            self.add(field, "must be positive")
        elif value > maximum:
            self.add(field, f"must be at most {maximum}")

    def regex(self, field: str, value: str) -> None:
        """A tenant's pattern: one the executors' engine (RE2) compiles."""
        why = patterns.problem(value)
        if why is not None:
            self.add(field, why)

    def unique(self, field: str, values: tuple[str, ...]) -> None:
        seen: set[str] = set()
        for i, v in enumerate(values):
            if v in seen:
                self.add(f"{field}[{i}]", f"{v!r} is listed twice")
            seen.add(v)
