"""Finding and redacting personal data and secrets in text.

Kinds: email addresses, phone numbers, payment card numbers (13 to 19 digits that pass
the Luhn check), national ids (US social security numbers, UK national insurance
numbers), IBANs (that pass their mod-97 check), API keys and secrets (well-known token
shapes, private keys, ``password=…``-style assignments) and IP addresses (v4 and v6). A
match is replaced by its kind in brackets: ``[EMAIL]``. Checksums keep ordinary numbers
(order ids, amounts) out; what looks like a kind but fails its check is left alone.

The text is a tenant's (a run's input, a tool's output), so the patterns run on RE2,
whose time is linear in the text: Python's backtracking engine took 43 s over 128 KiB of
crafted input, holding the event loop. RE2 has no look-around; the few boundaries that
need one are checked on the match (``Boundary``).
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import re2


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _iban(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _ssn(text: str) -> bool:
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ip(text: str) -> bool:
    if ":" not in text:  # the pattern matched four groups of 1 to 3 digits
        return all(int(octet) <= 255 for octet in text.split("."))
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_DATE = re.compile(r"\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


def _phone(text: str) -> bool:
    return 8 <= len(re.sub(r"\D", "", text)) <= 15 and not _DATE.fullmatch(text)


_SECRET_SHAPES = "|".join(
    (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
        r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
        r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
        r"\bgithub_pat_[A-Za-z0-9_]{40,}",
        r"\bxox[abpros]-[A-Za-z0-9-]{10,}",  # Slack
        r"\bAIza[0-9A-Za-z_-]{35}",  # Google
        r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
        r"\bph_[a-z2-7]{12}_[A-Za-z0-9_-]{43}",  # Pilothouse
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
        r"\b[Bb]earer\s+[A-Za-z0-9._~+/-]{16,}=*",
        # name = value, for names that say secret
        r"(?i:\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token"
        r"|client[_-]?secret|private[_-]?key)\b[\"']?\s*[:=]\s*[\"']?[^\s\"',;]{6,})",
    )
)


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


@dataclass(frozen=True)
class Boundary:
    """What may not stand right before and right after a match (RE2 has no look-around)."""

    before: Callable[[str], bool] = lambda _ch: False
    after: Callable[[str], bool] = lambda _ch: False

    def holds(self, text: str, start: int, end: int) -> bool:
        return not (start > 0 and self.before(text[start - 1])) and not (
            end < len(text) and self.after(text[end])
        )


_UK_NI_EXCLUDED = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})


def _ip_match(text: str, start: int, end: int) -> bool:
    found = text[start:end]
    if ":" in found and not Boundary(
        lambda ch: _word(ch) or ch == ":", lambda ch: _word(ch) or ch == ":"
    ).holds(text, start, end):
        return False
    return _ip(found)


def _phone_match(text: str, start: int, end: int) -> bool:
    return Boundary(lambda ch: _word(ch) or ch == "+", _word).holds(text, start, end) and _phone(
        text[start:end]
    )


def _on_value(check: Callable[[str], bool]) -> Callable[[str, int, int], bool]:
    return lambda text, start, end: check(text[start:end])


Check = Callable[[str, int, int], bool]
"""(text, start, end) → whether the match there is one."""

# Earlier kinds win where matches overlap: a secret may hold what looks like a phone
# number, a card number what looks like one too.
_PATTERNS: list[tuple[str, re2._Regexp[str], Check | None]] = [
    ("SECRET", re2.compile(_SECRET_SHAPES), None),
    (
        "EMAIL",
        re2.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        None,
    ),
    (
        "IBAN",
        re2.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        _on_value(_iban),
    ),
    ("CARD", re2.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _on_value(_card)),
    ("NATIONAL_ID", re2.compile(r"\b\d{3}-\d{2}-\d{4}\b"), _on_value(_ssn)),
    (
        "NATIONAL_ID",
        re2.compile(r"\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
        lambda text, start, _end: text[start : start + 2] not in _UK_NI_EXCLUDED,
    ),
    (
        "IP",
        re2.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"),
        _ip_match,
    ),
    (
        "PHONE",
        re2.compile(
            # International (+…), or grouped with a separator or a bracketed area code:
            # a bare run of digits is an id, not a phone number.
            r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,5}"
            r"|(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{2,4}(?:[ .-]\d{2,5}){1,3}"
        ),
        _phone_match,
    ),
]


def find(text: str) -> list[Finding]:
    """Every piece of personal data or secret in ``text``, in order, not overlapping."""
    starts: list[int] = []
    taken: list[Finding] = []  # sorted by start, never overlapping
    for kind, pattern, check in _PATTERNS:
        for m in pattern.finditer(text):
            start, end = m.start(), m.end()
            if check is not None and not check(text, start, end):
                continue
            at = bisect.bisect_left(starts, end)
            # Only the finding starting last before this one's end can overlap it.
            if at and taken[at - 1].end > start:
                continue
            starts.insert(at, start)
            taken.insert(at, Finding(kind, start, end))
    return taken


def redact(text: str) -> str:
    """``text`` with each finding replaced by its kind: ``[EMAIL]``, ``[CARD]``, …"""
    out, at = [], 0
    for f in find(text):
        out.append(text[at : f.start])
        out.append(f"[{f.kind}]")
        at = f.end
    out.append(text[at:])
    return "".join(out)
