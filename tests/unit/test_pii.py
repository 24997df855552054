"""Personal data and secrets are found and redacted; ordinary text and numbers are not."""

from __future__ import annotations

import pytest

from dataplane.guardrails.pii import find, redact

# Real-looking values of every kind, each valid by its own checksum where it has one.
CORPUS = {
    "EMAIL": ["ada.lovelace@example.com", "o'brien+billing@mail.example.co.uk".replace("'", "")],
    "PHONE": ["+1 415 555 0132", "+44 20 7946 0958", "(415) 555-0132", "+491701234567"],
    "CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "NATIONAL_ID": ["123-45-6789", "AB 12 34 56 C"],
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
    "SECRET": [
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-1234567890-abcdefghij",
        "password=hunter2hunter2",
        "api_key: 9f8e7d6c5b4a",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
        "ph_abcdefghijkl_" + "A" * 43,
    ],
    "IP": ["192.168.10.42", "2001:db8::8a2e:370:7334"],
}

ORDINARY = [
    "Order 12345678 shipped on 2026-12-01 at 14:30:15.",
    "Refund 19.99 * 3 = 59.97 USD; version 1.45.2; use std::vector.",
    "Card ending 1234, invoice INV-2026-0042, room 404.",
    "4111 1111 1111 1112 fails its check digit.",
    "Call me maybe.",
]


@pytest.mark.parametrize(("kind", "value"), [(k, v) for k, vs in CORPUS.items() for v in vs])
def test_each_kind_is_found_and_redacted(kind: str, value: str) -> None:
    text = f"Note: {value} (please keep)."
    [finding] = find(text)
    assert finding.kind == kind and text[finding.start : finding.end] == value
    redacted = redact(text)
    assert value not in redacted and f"[{kind}]" in redacted
    assert redacted.startswith("Note: ") and redacted.endswith(" (please keep).")


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert find(text) == [] and redact(text) == text


def test_a_text_full_of_them_keeps_none() -> None:
    values = [v for vs in CORPUS.values() for v in vs]
    text = " and ".join(values)
    redacted = redact(text)
    for value in values:
        assert value not in redacted
