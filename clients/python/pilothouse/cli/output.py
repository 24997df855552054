"""Printing resources: aligned tables, JSON and YAML."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from pilothouse.cli.kinds import Kind


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "   ".join(
            str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)
        ).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def render(kind: Kind, items: list[Any], fmt: str, *, single: bool) -> str:
    if fmt == "table":
        if not items:
            return f"No {kind.plural.lower()} found."
        return table([h for h, _ in kind.columns], [[f(m) for _, f in kind.columns] for m in items])
    return dump(as_dict(items[0]) if single else [as_dict(m) for m in items], fmt)


def dump(data: Any, fmt: str) -> str:
    """``data`` as JSON or YAML."""
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()


def describe(kind: Kind, message: Message) -> str:
    body = yaml.safe_dump(as_dict(message), sort_keys=False, allow_unicode=True).rstrip()
    return f"Kind: {kind.name}\n{body}"
