"""Gateway keys: ``gw-<id>-<secret>`` and their hashes.

``id`` is 8 lowercase hex characters and names the key in lists and logs;
``secret`` is 43 URL-safe characters (256 random bits) and is shown once, at
creation.  Only the SHA-256 of the secret is stored.

The bounds on what a key may be given (``MAX_LIMIT``, ``MAX_EXPIRY_DAYS``) live
here too, so that the admin API, the CLI, JWT claims and the store agree.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets

PREFIX = "gw"
_ID = re.compile(r"[0-9a-f]{8}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")

# Largest value of any numeric limit: exact as a float (JSON) and far inside SQLite's
# 64-bit INTEGER, yet beyond any real need (8 PiB per day, 9e15 tokens).
MAX_LIMIT = 2**53 - 1
# Longest lifetime a key may be given; longer is a typo (or an attack on the dates).
MAX_EXPIRY_DAYS = 3650


def new_key() -> tuple[str, str, str]:
    """A fresh key: ``(key_id, full_key, secret_hash)``."""
    key_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}-{key_id}-{secret}", hash_secret(secret)


def parse_key(text: object) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else ``None`` (never raises).

    The secret may itself contain ``-``, so only the first two are separators.
    """
    if not isinstance(text, str):
        return None
    parts = text.split("-", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    key_id, secret = parts[1], parts[2]
    if not _ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id, secret


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a secret.

    A fast hash is right here, unlike for passwords: the secret is 256 bits
    from ``secrets``, so there is nothing to guess and no dictionary to try;
    a slow KDF (bcrypt, scrypt) would only add latency to every request.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def verify(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def check_expiry_days(days: float, field: str = "expires_in_days") -> float:
    """``days`` if it is a finite number in (0, ``MAX_EXPIRY_DAYS``]; else ``ValueError``."""
    if not (math.isfinite(days) and 0 < days <= MAX_EXPIRY_DAYS):
        raise ValueError(f"{field}: {days!r} must be a number of days in (0, {MAX_EXPIRY_DAYS}]")
    return days
