"""What the accounts stores raise, whatever engine stands behind them.

``StoreUnavailable``   the shared store (PostgreSQL, Redis) cannot be reached or did
                       not answer in time.  The gateway fails closed: 503
                       ``accounts_unavailable`` and ``/ready`` says which store, and
                       the next request tries again (no restart needed).
``LimitRaced``         ``Counters.admit`` found, at the moment of admission, that a
                       limit the request was allowed under no longer holds (another
                       gateway admitted a request of the same key in between).
                       Nothing was counted; the caller decides again.
"""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The store named by ``store`` ("keys and usage" or "counters") is unreachable."""

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"{store}: {detail}")
        self.store = store
        self.detail = detail


class LimitRaced(Exception):
    """A limit checked by the policies was reached meanwhile; nothing was counted."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit
