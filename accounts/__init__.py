"""Keys, usage and counters behind narrow interfaces (``accounts.interfaces``).

The embedded default is one SQLite database for the keys and the usage ledger
(``accounts.sqlite_store``) and in-process counters for the short windows
(``accounts.memory_counters``).  Several gateways share PostgreSQL for the keys
and the ledger (``accounts.postgres_store``) and Redis for the counters
(``accounts.redis_counters``), chosen by ``gateway.stores``.  This package sits
beside ``policies`` and ``engine``: it may read ``policies``' plain types and
imports nothing of ``gateway`` or ``engine``; the gateway wires a store to the
interfaces.
"""
