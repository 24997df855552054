"""Provider credentials as the executor's operator declares them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataplane.models.credentials import (
    CredentialConfigError,
    CredentialRefused,
    from_settings,
    parse_flag,
    scrub,
)

ENV = {"OPENAI_API_KEY": "sk-platform", "ACME_KEY": "sk-acme", "PILOTHOUSE_EXECUTOR_KEY": "ph_x"}


def test_a_flag_names_a_variable_tenants_and_an_endpoint() -> None:
    c = parse_flag("openai=OPENAI_API_KEY:acme,beta:https://api.openai.com/v1", ENV)
    assert (c.name, c.secret, c.tenants) == ("openai", "sk-platform", {"acme", "beta"})
    assert c.may_go_to("https://api.openai.com/v1") and c.may_go_to("https://api.openai.com/v1/")
    assert not c.may_go_to("https://api.openai.com.evil.example/v1")
    assert not c.may_go_to("http://api.openai.com/v1")
    assert not c.may_go_to("https://api.openai.com/v10")
    assert not c.may_go_to("https://user@api.openai.com/v1")
    every = parse_flag("shared=ACME_KEY:*", ENV)
    assert every.granted_to("anyone") and every.may_go_to("http://127.0.0.1:1/v1")


@pytest.mark.parametrize(
    "flag, problem",
    [
        ("exec=PILOTHOUSE_EXECUTOR_KEY:*", "own settings"),
        ("exec=pilothouse_executor_key:*", "own settings"),
        ("openai=OPENAI_API_KEY", "NAME=ENV_VAR:TENANTS"),
        ("openai=UNSET_VARIABLE:*", "not set"),
        ("Bad_Name=OPENAI_API_KEY:*", "lower-case"),
        ("openai=NOT-A-VAR:*", "not a variable name"),
        ("openai=OPENAI_API_KEY:*:ftp://x", r"not an http\(s\) URL"),
    ],
)
def test_bad_declarations_stop_the_executor(flag: str, problem: str) -> None:
    with pytest.raises(CredentialConfigError, match=problem):
        parse_flag(flag, ENV)


def test_a_credentials_file(tmp_path: Path) -> None:
    secret = tmp_path / "acme.key"
    secret.write_text("sk-from-file\n")
    file = tmp_path / "credentials.yaml"
    file.write_text(
        "credentials:\n"
        f"  - {{name: acme, file: {secret}, tenants: [acme]}}\n"
        "  - {name: openai, env: OPENAI_API_KEY, tenants: '*', "
        "endpoints: [https://api.openai.com/v1]}\n"
    )
    held = from_settings([], file, ENV)
    assert held.resolve("acme", tenant="acme", endpoint="http://10.0.0.1/v1") == "sk-from-file"
    with pytest.raises(CredentialRefused, match="not granted"):
        held.resolve("acme", tenant="beta", endpoint="http://10.0.0.1/v1")
    with pytest.raises(CredentialRefused, match="may not be sent"):
        held.resolve("openai", tenant="beta", endpoint="https://attacker.example/v1")
    assert set(held.secrets) == {"sk-from-file", "sk-platform"}
    with pytest.raises(CredentialConfigError, match="declared twice"):
        from_settings(["acme=ACME_KEY:acme"], file, ENV)
    file.write_text("credentials:\n  - {name: x, env: PILOTHOUSE_EXECUTOR_KEY, tenants: ['*']}\n")
    with pytest.raises(CredentialConfigError, match="own settings"):
        from_settings([], file, ENV)


@pytest.mark.parametrize(
    "message",
    [
        "Incorrect API key provided: sk-live-0123456789abcdef.",
        "Incorrect API key provided: sk-live-****************cdef. You can find your key…",
        "key 'sk-live-0123456789abcdef' is invalid",
        '{"error": "bad key sk-live-0123456789"}',
        "Bearer sk-live-0123456789abcdef rejected",
    ],
)
def test_provider_messages_lose_the_credential(message: str) -> None:
    scrubbed = scrub(message, "sk-live-0123456789abcdef")
    assert "0123456789" not in scrubbed and "[credential]" in scrubbed
    assert "cdef." not in scrubbed or "****" not in scrubbed


def test_other_words_are_kept() -> None:
    text = "rate limited: retry in 20 seconds (request req_abc)"
    assert scrub(text, "sk-live-0123456789abcdef") == text
