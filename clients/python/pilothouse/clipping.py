"""Values cut short for messages: a refusal travels in a response's trailing metadata
(16 KiB with every header), and one that quoted a caller's multi-KB value in full came
back as RESOURCE_EXHAUSTED instead of the error. Both servers clip with this."""

from __future__ import annotations


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[: max(0, limit - 40)]}… ({len(text) - limit + 40} more characters)"
