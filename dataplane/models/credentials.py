"""Provider credentials: the secrets an executor's operator lets tenants' models use.

A tenant's Model names a credential (``Model.credential``); it never names where the
secret lives. The executor's operator declares each credential (``--provider-credential``
or ``--credentials-file``): where its secret is read from (an environment variable or a
file), which tenants may name it and, optionally, the only endpoints it may be sent to.
A model call resolves its credential here and nowhere else, so nothing a tenant
configures can make an executor send its own key, another tenant's credential or any
other variable of its environment. Variables named ``PILOTHOUSE_*`` (the executor's own
keys and settings) can never be a credential's source.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
ENV_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV_PREFIX = "PILOTHOUSE_"
EVERY_TENANT = "*"
MAX_SECRET_BYTES = 16 * 1024


class CredentialConfigError(ValueError):
    """The operator's declaration of credentials is wrong; the executor does not start."""


class CredentialRefused(Exception):
    """A model may not use the credential it names; the message says why (never the
    secret)."""


@dataclass(frozen=True)
class Credential:
    name: str
    source: str
    """Where the secret came from, for messages: ``env:VAR`` or ``file:PATH``."""
    secret: str
    tenants: frozenset[str]
    """Tenant ids that may name it; ``*`` grants it to every tenant."""
    endpoints: tuple[str, ...] = ()
    """Base URLs it may be sent to (a model's endpoint must equal one or lie under it);
    empty: wherever the executor's egress policy lets the model's calls go."""

    def granted_to(self, tenant: str) -> bool:
        return EVERY_TENANT in self.tenants or tenant in self.tenants

    def may_go_to(self, endpoint: str) -> bool:
        return not self.endpoints or any(_under(endpoint, base) for base in self.endpoints)


class Credentials:
    """The credentials an executor holds, looked up by name for a tenant's model."""

    def __init__(self, credentials: Iterable[Credential] = ()) -> None:
        self._by_name: dict[str, Credential] = {}
        for credential in credentials:
            if credential.name in self._by_name:
                raise CredentialConfigError(f"credential {credential.name!r} is declared twice")
            self._by_name[credential.name] = credential

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret held: what must never appear in a message that leaves."""
        return tuple(c.secret for c in self._by_name.values())

    def resolve(self, name: str, *, tenant: str, endpoint: str) -> str:
        """The secret of credential ``name`` for a model of ``tenant`` calling
        ``endpoint``; ``CredentialRefused`` when it is unknown, not granted to the tenant
        or not to be sent there."""
        credential = self._by_name.get(name)
        if credential is None:
            raise CredentialRefused(
                f"credential {name!r} is not configured on this executor "
                "(its operator declares credentials with --provider-credential)"
            )
        if not credential.granted_to(tenant):
            raise CredentialRefused(f"credential {name!r} is not granted to tenant {tenant!r}")
        if not credential.may_go_to(endpoint):
            raise CredentialRefused(
                f"credential {name!r} may not be sent to {_origin(endpoint)}: it is bound to "
                + ", ".join(credential.endpoints)
            )
        return credential.secret


def parse_flag(value: str, env: Mapping[str, str]) -> Credential:
    """``NAME=ENV_VAR:TENANTS[:ENDPOINT]``: TENANTS is a comma-separated list of tenant ids
    or ``*``; ENDPOINT (which may itself hold colons) is the base URL it is bound to."""
    name, equals, rest = value.partition("=")
    variable, colon, rest = rest.partition(":")
    tenants, _, endpoint = rest.partition(":")
    if not equals or not colon or not tenants:
        raise CredentialConfigError(
            f"--provider-credential {value[:100]!r}: expected NAME=ENV_VAR:TENANTS[:ENDPOINT], "
            "e.g. openai=OPENAI_API_KEY:acme,beta:https://api.openai.com/v1 "
            "(TENANTS may be * for every tenant)"
        )
    return _credential(
        name,
        {
            "env": variable,
            "tenants": tenants.split(","),
            "endpoints": [endpoint] if endpoint else [],
        },
        env,
        where="--provider-credential",
    )


def load_file(path: Path, env: Mapping[str, str]) -> list[Credential]:
    """A credentials file (YAML)::

    credentials:
      - name: openai
        env: OPENAI_API_KEY          # or file: /run/secrets/openai
        tenants: ["*"]               # tenant ids, or "*" for every tenant
        endpoints: [https://api.openai.com/v1]   # optional
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CredentialConfigError(f"--credentials-file {path}: {e}") from e
    entries = data.get("credentials") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise CredentialConfigError(f"{path}: expected a mapping with a list 'credentials'")
    out = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CredentialConfigError(f"{path}: credentials[{index}] must be a mapping")
        out.append(
            _credential(entry.get("name"), entry, env, where=f"{path}: credentials[{index}]")
        )
    return out


def _credential(
    name: Any, spec: Mapping[str, Any], env: Mapping[str, str], *, where: str
) -> Credential:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise CredentialConfigError(
            f"{where}: name {str(name)[:80]!r} must be lower-case letters, digits and '-', "
            "starting with a letter"
        )
    unknown = set(spec) - {"name", "env", "file", "tenants", "endpoints"}
    if unknown:
        raise CredentialConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    variable, file = spec.get("env"), spec.get("file")
    if bool(variable) == bool(file):
        raise CredentialConfigError(f"{where}: give exactly one of env and file")
    if variable:
        if not isinstance(variable, str) or not ENV_PATTERN.match(variable):
            raise CredentialConfigError(f"{where}: {str(variable)[:80]!r} is not a variable name")
        if variable.upper().startswith(RESERVED_ENV_PREFIX):
            raise CredentialConfigError(
                f"{where}: {variable} is one of the executor's own settings "
                f"({RESERVED_ENV_PREFIX}*) and can never be a provider credential"
            )
        secret = env.get(variable)
        if not secret:
            raise CredentialConfigError(f"{where}: environment variable {variable} is not set")
        source = f"env:{variable}"
    else:
        try:
            secret = Path(str(file)).read_text().strip()
        except OSError as e:
            raise CredentialConfigError(f"{where}: {e}") from e
        if not secret:
            raise CredentialConfigError(f"{where}: {file} is empty")
        source = f"file:{file}"
    if len(secret.encode()) > MAX_SECRET_BYTES or not secret.isprintable():
        raise CredentialConfigError(f"{where}: the secret in {source} is not a usable token")
    tenants = spec.get("tenants")
    if isinstance(tenants, str):
        tenants = [tenants]
    if not isinstance(tenants, list) or not tenants or not all(isinstance(t, str) for t in tenants):
        raise CredentialConfigError(
            f"{where}: tenants must list the tenant ids that may use it (or '*' for every tenant)"
        )
    endpoints = spec.get("endpoints") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise CredentialConfigError(f"{where}: endpoints must be a list of base URLs")
    for endpoint in endpoints:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CredentialConfigError(f"{where}: {endpoint[:100]!r} is not an http(s) URL")
    return Credential(
        name,
        source,
        secret,
        frozenset(t.strip() for t in tenants if t.strip()),
        tuple(e.rstrip("/") for e in endpoints),
    )


def from_settings(
    flags: Iterable[str], file: Path | None, env: Mapping[str, str] = os.environ
) -> Credentials:
    found = [parse_flag(flag, env) for flag in flags]
    if file is not None:
        found += load_file(file, env)
    return Credentials(found)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _under(url: str, base: str) -> bool:
    """Whether ``url`` is ``base`` or a path below it, on the same scheme, host and port."""
    u, b = urlsplit(url), urlsplit(base)
    if (u.scheme, u.hostname, _port(u)) != (b.scheme, b.hostname, _port(b)) or u.username:
        return False
    path, prefix = u.path.rstrip("/"), b.path.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def _port(parts: Any) -> int:
    try:
        port: int | None = parts.port
    except ValueError:
        return -1
    return port or (443 if parts.scheme == "https" else 80)


_SCRUB_WINDOW = 6
_TOKEN = re.compile(r"[^\s\"'`,;:()<>\[\]{}]+")
REDACTED = "[credential]"


def scrub(text: str, secret: str) -> str:
    """``text`` with every word that quotes ``secret``, whole or in part (a provider's
    "Incorrect API key provided: sk-abc1****wxyz"), replaced by ``[credential]``. A word
    shares a run of at least six characters with the secret, or is a masked form of it
    (its unmasked ends are the secret's)."""
    if not secret or len(secret) < _SCRUB_WINDOW:
        return text.replace(secret, REDACTED) if secret else text
    grams = {secret[i : i + _SCRUB_WINDOW] for i in range(len(secret) - _SCRUB_WINDOW + 1)}

    def redact(match: re.Match[str]) -> str:
        word = match.group(0)
        if any(word[i : i + _SCRUB_WINDOW] in grams for i in range(len(word) - _SCRUB_WINDOW + 1)):
            return REDACTED
        head, _, tail = word.partition("*")
        tail = tail.lstrip("*")
        if "*" in word and len(head) >= 3 and secret.startswith(head) and secret.endswith(tail):
            return REDACTED
        return word

    return _TOKEN.sub(redact, text)
