"""Regular expressions that tenants write: one engine for checking and for running them.

Guardrail ``blocked_patterns``, eval ``GRADER_REGEX`` expectations and JSON Schema
``pattern``/``patternProperties`` come from a tenant and run on text an attacker may
choose. Python's ``re`` backtracks (29 characters against a pattern such as ``(a+)+$``
took 18 s, doubling with each character) and holds the GIL while it does, so no thread
pool frees the event loop. They run on RE2 instead, whose time is linear in the text, and
the control plane checks them with the same engine: a pattern RE2 cannot compile (a
back-reference, a look-around) is refused at the API, never found out at the executor.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import re2

MAX_PATTERN_LENGTH = 1024
"""Characters of one tenant pattern."""
MAX_PROGRAM_MEMORY = 1 << 20
"""Bytes RE2 may use to compile one pattern (a{1000}{1000} is refused, not built)."""

_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_PROGRAM_MEMORY
_OPTIONS.log_errors = False


class PatternError(ValueError):
    """A pattern the engine refuses; the message says why, for a field violation."""


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re2._Regexp[str]:
    """The compiled pattern (cached), or ``PatternError``."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"is {len(pattern)} characters; at most {MAX_PATTERN_LENGTH}")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        raise PatternError(
            f"is not a pattern RE2 accepts ({e}); Pilothouse runs tenants' patterns on RE2, "
            "which has no back-references or look-around"
        ) from None


def problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused, or None."""
    try:
        compile_pattern(pattern)
    except PatternError as e:
        return str(e)
    return None


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches anywhere in ``text`` (in time linear in ``text``)."""
    return compile_pattern(pattern).search(text) is not None


def schema_patterns(schema: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, pattern) for every ``pattern`` and ``patternProperties`` key of a JSON
    Schema, wherever it is nested."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            here = f"{path}/{key}"
            if key == "pattern" and isinstance(value, str):
                yield here, value
            elif key == "patternProperties" and isinstance(value, dict):
                for name, inner in value.items():
                    yield f"{here}/{name}", name
                    yield from schema_patterns(inner, f"{here}/{name}")
            else:
                yield from schema_patterns(value, here)
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            yield from schema_patterns(item, f"{path}/{index}")
