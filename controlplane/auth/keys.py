"""The API key format: ``ph_{id}_{secret}``.

``id`` is 12 lower-case base32 characters and names the key (``apiKeys/{id}``); ``secret``
is 32 random bytes, URL-safe base64. Only SHA-256 of the secret is stored: the secret has
256 bits of entropy, so a fast hash is as safe as a slow one and keeps every call cheap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_KEY = re.compile(r"^ph_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class KeyMaterial:
    id: str
    secret: str

    @property
    def token(self) -> str:
        return f"ph_{self.id}_{self.secret}"


def generate() -> KeyMaterial:
    key_id = base64.b32encode(secrets.token_bytes(8)).decode().lower()[:12]
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return KeyMaterial(key_id, secret)


def parse(token: str) -> KeyMaterial | None:
    match = _KEY.match(token)
    return None if match is None else KeyMaterial(match[1], match[2])


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
