"""Applying an update_mask (AIP-134) to a spec dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from controlplane.errors import InvalidArgument

S = TypeVar("S")


def apply_mask(existing: S, incoming: S, paths: Sequence[str], *, output_only: frozenset[str]) -> S:
    """``existing`` with the fields named by ``paths`` taken from ``incoming``.

    An empty mask (or ``*``) replaces every field a caller may set. Paths may reach into
    nested messages (``default_budget.max_steps``); a path naming no field, or an
    output-only one, is INVALID_ARGUMENT.
    """
    if not paths or list(paths) == ["*"]:
        return dataclasses.replace(
            existing,  # type: ignore[type-var]
            **{
                f.name: getattr(incoming, f.name)
                for f in dataclasses.fields(existing)  # type: ignore[arg-type]
                if f.name not in output_only
            },
        )
    result = existing
    for path in paths:
        if path.split(".")[0] in output_only:
            raise InvalidArgument.of("update_mask", f"{path!r} is output only")
        result = _replace_path(result, incoming, path.split("."), path)
    return result


def _replace_path(target: Any, source: Any, parts: list[str], path: str) -> Any:
    if not dataclasses.is_dataclass(target) or isinstance(target, type):
        raise InvalidArgument.of("update_mask", f"{path!r} names no field")
    names = {f.name for f in dataclasses.fields(target)}
    head = parts[0]
    if head not in names:
        raise InvalidArgument.of("update_mask", f"{path!r} names no field")
    if len(parts) == 1:
        value = getattr(source, head)
    else:
        value = _replace_path(getattr(target, head), getattr(source, head), parts[1:], path)
    return dataclasses.replace(target, **{head: value})
