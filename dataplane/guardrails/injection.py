"""Screening tool output for prompt injection: text that tries to instruct the model
rather than inform it. A screen of patterns, each named, so that a decision says which
fired; it looks for instructions aimed at the model, not for topics, so ordinary data
(orders, documents, error messages) passes. The text is a tool's output, so the rules
run on RE2 (linear in the text, never backtracking)."""

from __future__ import annotations

import re2

_RULES: dict[str, re2._Regexp[str]] = {
    name: re2.compile("(?im)" + pattern)
    for name, pattern in {
        "override": r"\b(?:ignore|disregard|forget|override|bypass)\b.{0,40}?\b(?:previous|prior"
        r"|above|earlier|preceding|system|original|all|your)\b.{0,20}?\b(?:instructions?"
        r"|prompts?|rules|directions|guidelines|context)\b",
        "new_instructions": r"\b(?:new|updated|real|actual|important)\s+(?:system\s+)?"
        r"instructions?\s*[:\-]|\bfrom now on,?\s+(?:you|the assistant)\b",
        "role_hijack": r"\byou are now\b|\bact as (?:an? )?(?:admin|administrator|developer"
        r"|system|root)\b|\bdeveloper mode\b|\bjailbreak",
        "role_markup": r"^\s*(?:system|assistant|developer)\s*:|<\|im_start\|>|<\|system\|>"
        r"|\[/?INST\]|^#{2,}\s*(?:system|instructions?)\b|</?(?:system|tool_output)\b",
        "tool_directive": r"\b(?:call|invoke|use|run|execute|trigger)\s+(?:the\s+)?[`'\"]?"
        r"[a-z_][\w.-]*[`'\"]?\s+(?:tool|function)\b|\b(?:assistant|model|ai)\b.{0,30}\b(?:must"
        r"|should)\s+(?:call|invoke|delete|send|transfer|refund)\b",
        "exfiltration": r"\b(?:send|post|forward|upload|leak|exfiltrate|transmit|email)\b.{0,80}?"
        r"(?:https?://|\bto\s+\S+@\S+\.\w+)|\b(?:reveal|print|output|include|share)\b.{0,40}?"
        r"\b(?:api[ _-]?keys?|secrets?|passwords?|credentials|tokens?|system prompt)\b",
        "concealment": r"\bdo not (?:tell|inform|mention|reveal|alert)\b.{0,20}\buser\b"
        r"|\bwithout (?:telling|informing|alerting) the user\b|\bkeep this (?:secret|hidden)\b",
    }.items()
}


def screen(text: str) -> list[str]:
    """The names of the rules ``text`` trips, in rule order; none: it passes."""
    return [name for name, pattern in _RULES.items() if pattern.search(text)]
