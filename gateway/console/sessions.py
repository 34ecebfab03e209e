"""Console sessions: a key pasted once, then an opaque cookie for a short while.

The cookie holds 32 random bytes; the gateway keeps only their SHA-256, with the
credential that signed in (in this process's memory, never on disk), the key id
and the session's CSRF token.  Every request re-authenticates that credential
exactly as the API does, so revoking or expiring the key ends its sessions at
their next request, and a limit or scope change applies at once.  Sessions are
bounded: at most ``MAX_PER_KEY`` per key (the oldest ends) and ``MAX_TOTAL`` in
all, so signing in in a loop cannot grow memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "gw_console"
LOGIN_COOKIE = "gw_console_login"  # the sign-in form's CSRF nonce (double submit)
MAX_PER_KEY = 20
MAX_TOTAL = 2000


@dataclass(frozen=True)
class Session:
    key_id: str
    credential: str | None  # None: authentication is off (loopback only)
    csrf: str
    expires_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


class Sessions:
    """The signed-in browsers of this gateway (one writer: the event loop)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._by_digest: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_digest)

    def create(self, key_id: str, credential: str | None, now: float) -> tuple[str, Session]:
        """A new session for ``key_id``: the cookie value and the session."""
        self._expire(now)
        own = [d for d, s in self._by_digest.items() if s.key_id == key_id]
        for digest in own[: max(0, len(own) - MAX_PER_KEY + 1)]:
            del self._by_digest[digest]
        while len(self._by_digest) >= MAX_TOTAL:
            self._by_digest.popitem(last=False)
        token = secrets.token_urlsafe(32)
        session = Session(key_id, credential, secrets.token_urlsafe(32), now + self.ttl)
        self._by_digest[_digest(token)] = session
        return token, session

    def get(self, token: str | None, now: float) -> Session | None:
        if not token or len(token) > 256:
            return None
        digest = _digest(token)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if session.expires_at <= now:
            del self._by_digest[digest]
            return None
        return session

    def end(self, token: str | None) -> None:
        if token and len(token) <= 256:
            self._by_digest.pop(_digest(token), None)

    def end_key(self, key_id: str) -> int:
        """End every session of ``key_id`` (its key was revoked); how many ended."""
        doomed = [d for d, s in self._by_digest.items() if s.key_id == key_id]
        for digest in doomed:
            del self._by_digest[digest]
        return len(doomed)

    def _expire(self, now: float) -> None:
        for digest in [d for d, s in self._by_digest.items() if s.expires_at <= now]:
            del self._by_digest[digest]
