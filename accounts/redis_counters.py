"""Short-window usage counters per key, in one Redis that several gateways share.

``accounts.memory_counters``' answers for a fleet: a key limited to 10 requests a
minute gets 10 in all, however its requests spread over the gateways, and its
``max_concurrent`` holds across them.  Each key's data lives under ``prefix`` and
the key id in hex inside a hash tag (``gw:{6b5f31}:req`` for ``k_1``), so odd ids
cannot collide or escape and a Redis Cluster keeps one key's data in one slot.  A
request's id (its hold's ``ref``) is ``<gateway id>:<n>``:

    :req    sorted set  request id -> start time (last 60 s)           TTL 120 s
    :tok    sorted set  hold id -> admission time (last 60 s, or open)  TTL 120 s + 2 leases
    :amt    hash        hold id -> tokens (reserved, then settled)      TTL as :tok
    :open   sorted set  open hold id -> lease expiry                    TTL as :tok
    :slots  sorted set  slot (hold) id -> lease expiry                  TTL as :tok
    :loads  sorted set  load id -> time (last 3600 s)                   TTL 2 h
    :day    hash        day (UTC day number), tokens, bytes             TTL 2 days

Atomicity: every operation is one Lua script (one EVALSHA, so one round trip; two
the first time a key is seen in a day, see below), and Redis runs a script alone.
``admit`` prunes the windows, checks ``limits`` exactly as ``policies.limits``
does, and only then counts, so two gateways that decided on the same snapshot
cannot both take the last place: the second gets ``LimitRaced`` with nothing
counted, and decides again.  Windows use the callers' ``now`` (each gateway's
``time.time()``: their clocks should agree to well under a second); leases use the
Redis server's clock (``TIME``), one clock for all.

Day totals are seeded once per key and UTC day: a script that finds ``:day`` on
an older day (or absent) answers "seed"; the caller reads ``period_totals`` from
the ledger and calls again with it, and the script applies it only if no other
gateway did meanwhile, adding the holds still open (as ``MemoryCounters`` carries
them over midnight).  ``:loads`` is seeded likewise, when it does not exist.

Leases: each slot and each open hold expires ``lease_ttl`` after its last refresh.
A daemon thread refreshes this process's live leases every ``lease_ttl / 3`` (one
pipelined round trip).  A gateway that dies stops refreshing: its slots are free
again after ``lease_ttl``, and its open holds count as settled at their reserved
amounts (fail closed).  Every script prunes run-out leases first.

Settling: a hold is settled once in the whole fleet, by the first ``settle`` (its
gateway's own, or ``settle_ref`` from the gateway its request was forwarded to) or
by its lease running out, at its reserved amount; a later settlement is a no-op.

Failures: an unreachable or failing Redis raises ``StoreUnavailable`` from
``snapshot``, ``admit`` and ``charge_download`` (503, fail closed); for
``FAIL_FAST_S`` after a failure calls raise at once without touching the network,
then the next call tries again, so service resumes by itself.  ``finish``,
``settle`` and ``settle_ref`` never raise: what they could not give back runs out
with its lease.  A reply lost after the script ran (a timeout) leaves the request
counted and its lease to run out.  A Redis that restarts empty forgets the minute
windows and the slots; the day totals are seeded again from the ledger.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from accounts import interfaces
from accounts.errors import LimitRaced, StoreUnavailable
from accounts.memory_counters import DAY, PeriodTotals, day_start
from accounts.redis_scripts import ADMIT, CHARGE_DOWNLOAD, REFRESH, SETTLE, SNAPSHOT
from policies.principal import Limits
from policies.usage import UsageSnapshot

T = TypeVar("T")
log = logging.getLogger("accounts.redis_counters")
STORE = "counters"
FAIL_FAST_S = 1.0
CHECKED = (  # the order of policies.evaluate; the first that fails is raised
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent",
    "tokens_per_day",
    "loads_per_hour",
)


@dataclass(eq=False)
class RedisHold:
    """One admitted request's slot and reservation, in Redis under ``ref`` (which
    another gateway passes to ``settle_ref``)."""

    counters: RedisCounters
    key_id: str
    ref: str
    settled: bool = False
    finished: bool = False

    def settle(self, real: int) -> None:
        """Replace the reservation by the ``real`` count (the first settlement counts,
        this gateway's or another's; never raises)."""
        with self.counters._lock:
            if self.settled:
                return
            self.settled = True
        self.counters.settle_ref(self.key_id, self.ref, real)


class _Keys(NamedTuple):
    """One key id's Redis keys (see the module docstring), in the scripts' KEYS order."""

    req: str
    tok: str
    amt: str
    open: str
    slots: str
    loads: str
    day: str


@dataclass
class _Lease:
    keys: _Keys
    slot: bool = True
    open: bool = True


def _is_outage(exc: redis.RedisError) -> bool:
    """Whether every call would fail now (fail fast), unlike one key's bad data."""
    if type(exc) is redis.ResponseError:
        return str(exc).startswith(("MISCONF", "BUSY", "NOREPLICAS"))
    return True


def _reason(exc: redis.RedisError, timeout: float) -> str:
    """A short reason without the server's address or credentials."""
    if isinstance(exc, redis.TimeoutError):
        return f"Redis did not answer within {timeout:g} s"
    if isinstance(exc, redis.AuthenticationError):
        return "Redis refused the credentials"
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return "Redis is loading its data"
    if isinstance(exc, redis.ConnectionError):
        # "Error 111 connecting to host:port. Connection refused.": the part after the address
        last = str(exc).strip().rstrip(".").rsplit(". ", 1)[-1]
        if not last or "connecting to" in last:
            return "Redis is unreachable"
        return f"Redis is unreachable ({last[:80]})"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "Redis is a read-only replica"
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "Redis is out of memory"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"Redis failed: {first[:120]}"


class RedisCounters:
    """``Counters`` in the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

    Opening does not touch the network: a gateway starts while Redis is down, and
    ``unavailable`` says why until it is back.
    """

    def __init__(
        self,
        url: str,
        period_totals: PeriodTotals,
        *,
        prefix: str = "gw:",
        lease_ttl: float = 15.0,
        timeout: float = 0.5,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix: no braces (the key id is the hash tag)")
        self._period_totals = period_totals
        self._prefix = prefix
        self._lease_ttl = lease_ttl
        self._timeout = timeout
        self._redis: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 0),  # an admit must not run twice; fail fast instead
            decode_responses=True,
        )
        self._snapshot = self._redis.register_script(SNAPSHOT)
        self._admit = self._redis.register_script(ADMIT)
        self._charge = self._redis.register_script(CHARGE_DOWNLOAD)
        self._settle_script = self._redis.register_script(SETTLE)
        self._refresh_script = self._redis.register_script(REFRESH)
        self._node = secrets.token_hex(6)
        self._ids = itertools.count()
        self._lock = threading.Lock()  # the holds' flags and _leases
        self._leases: dict[str, _Lease] = {}
        self._down: tuple[float, str] | None = None  # (since, why), monotonic
        self._last_ok = float("-inf")
        self._closed = False
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, name="redis-counters-heartbeat", daemon=True
        )
        self._heartbeat.start()

    # -- the counters ----------------------------------------------------------------
    def snapshot(self, key_id: str, now: float) -> UsageSnapshot:
        """This key's usage at ``now`` on every gateway; open reservations count as used."""
        reply = self._seeded(self._snapshot, key_id, now, [])
        _, requests, tokens, concurrent, tokens_today, loads, download_bytes = reply
        held = []
        for i in range(0, len(tokens), 3):
            at, amount, is_open = float(tokens[i]), int(tokens[i + 1]), tokens[i + 2] == "1"
            held.append((max(at, now) if is_open else at, amount))
        return UsageSnapshot(
            recent_requests=tuple(float(t) for t in requests[1::2]),
            recent_tokens=tuple(held),
            concurrent=int(concurrent),
            tokens_today=int(tokens_today),
            recent_loads=tuple(float(t) for t in loads[1::2]),
            download_bytes_today=int(download_bytes),
        )

    def admit(
        self, key_id: str, now: float, *, load: bool, tokens: int = 0, limits: Limits | None = None
    ) -> RedisHold:
        """Count a request, take its slot and reserve ``tokens``, if ``limits`` still hold
        on every gateway's count; else ``LimitRaced`` (nothing counted)."""
        ref = f"{self._node}:{next(self._ids)}"
        bounds = [None if limits is None else getattr(limits, name) for name in CHECKED]
        args: list[str | int] = [ref, max(0, tokens), "1" if load else "0"]
        args.append(repr(float(self._lease_ttl)))
        args += ["" if bound is None else int(bound) for bound in bounds]
        reply = self._seeded(self._admit, key_id, now, args)
        if reply[0] == "raced":
            raise LimitRaced(reply[1])
        with self._lock:
            self._leases[ref] = _Lease(self._keys(key_id))
        return RedisHold(self, key_id, ref)

    def finish(self, hold: interfaces.TokenHold) -> None:
        """Give back the slot ``admit`` took with ``hold`` (first call counts; never raises)."""
        assert isinstance(hold, RedisHold), "a hold of these counters"
        with self._lock:
            if hold.finished:
                return
            hold.finished = True
            self._drop_lease(hold.ref, slot=True)
        slots = self._keys(hold.key_id).slots
        self._best_effort("finish", lambda: self._redis.zrem(slots, hold.ref))

    def settle_ref(self, key_id: str, ref: str, real: int) -> None:
        """Settle the open hold ``ref`` of ``key_id`` to ``real`` tokens, whichever gateway
        took it (a no-op once settled or run out; never raises)."""
        if not ref:
            return
        with self._lock:
            self._drop_lease(ref, slot=False)
        keys = list(self._keys(key_id))
        args: list[str | int] = [ref, max(0, real)]
        self._best_effort("settle", lambda: self._settle_script(keys, args))

    def charge_download(self, key_id: str, nbytes: int, now: float) -> None:
        self._seeded(self._charge, key_id, now, [int(nbytes)])

    def unavailable(self) -> str | None:
        """Why Redis cannot be used now (a failure in the last second, or a PING that
        fails), else ``None``; a call that succeeded in the last second answers for it."""
        if self._down is None and time.monotonic() - self._last_ok < FAIL_FAST_S:
            return None
        try:
            self._call(self._redis.ping)
        except (StoreUnavailable, RuntimeError) as exc:  # RuntimeError: closed
            return str(exc)
        return None

    def close(self, *, release: bool = True) -> None:
        """Stop refreshing leases, give back this process's live ones (best effort) and
        close the connections.  ``release=False`` leaves them to run out, as a killed
        gateway does."""
        self._stop.set()
        self._heartbeat.join()
        with self._lock:
            leases, self._leases = self._leases, {}
        if release and leases and not self._failing_fast():
            pipe = self._redis.pipeline(transaction=False)
            for hold_id, lease in leases.items():
                pipe.zrem(lease.keys.slots, hold_id)
                pipe.zrem(lease.keys.open, hold_id)
            self._best_effort("close", pipe.execute)
        self._closed = True
        self._redis.close()

    # -- Redis -----------------------------------------------------------------------
    def _keys(self, key_id: str) -> _Keys:
        tag = f"{self._prefix}{{{key_id.encode().hex()}}}:"
        return _Keys(*(tag + name for name in _Keys._fields))

    def _seeded(self, script: Script, key_id: str, now: float, args: list[str | int]) -> Any:
        """``script``'s reply for ``key_id``; run again with the ledger's totals when
        the day has not been seeded yet."""
        keys = list(self._keys(key_id))
        head: list[str | int] = [repr(float(now)), int(day_start(now) // DAY)]
        reply = self._call(lambda: script(keys, [*head, "", *args]))
        if reply[0] != "seed":
            return reply
        tokens, nbytes, loads = self._period_totals(key_id, day_start(now))
        seed = " ".join(
            [str(int(tokens)), str(int(nbytes))] + [repr(float(t)) for t in loads if t > now - 3600]
        )
        return self._call(lambda: script(keys, [*head, seed, *args]))

    def _failing_fast(self) -> str | None:
        down = self._down
        if down is not None and time.monotonic() - down[0] < FAIL_FAST_S:
            return down[1]
        return None

    def _call(self, fn: Callable[[], T]) -> T:
        """``fn()`` against Redis; its failures as ``StoreUnavailable``."""
        if self._closed:
            raise RuntimeError("the counters are closed")
        if (why := self._failing_fast()) is not None:
            raise StoreUnavailable(STORE, why)
        try:
            result = fn()
        except redis.RedisError as exc:
            why = _reason(exc, self._timeout)
            if _is_outage(exc):
                self._down = (time.monotonic(), why)
            else:
                log.error("counters: %s", why)
            raise StoreUnavailable(STORE, why) from exc
        self._down, self._last_ok = None, time.monotonic()
        return result

    def _best_effort(self, what: str, fn: Callable[[], Any]) -> bool:
        """``fn()``, or a warning when it fails (what it gives back runs out with its lease)."""
        try:
            self._call(fn)
        except (StoreUnavailable, RuntimeError) as exc:
            log.warning("%s left to its lease: %s", what, exc)
            return False
        return True

    # -- leases ----------------------------------------------------------------------
    def _drop_lease(self, hold_id: str, *, slot: bool) -> None:
        """Stop refreshing the slot (``slot``) or the open hold of ``hold_id`` (locked)."""
        lease = self._leases.get(hold_id)
        if lease is None:
            return
        if slot:
            lease.slot = False
        else:
            lease.open = False
        if not (lease.slot or lease.open):
            del self._leases[hold_id]

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(self._lease_ttl / 3):
            try:
                lost = self._refresh()
            except Exception as exc:  # the heartbeat outlives any one failure
                if not failing:
                    why = _reason(exc, self._timeout) if isinstance(exc, redis.RedisError) else exc
                    log.warning("counters: leases not refreshed: %s", why)
                failing = True
                continue
            failing = False
            if lost:
                log.warning("counters: %d slot lease(s) ran out before their refresh", lost)

    def _refresh(self) -> int:
        """Push this process's live leases ``lease_ttl`` ahead: one pipelined round trip."""
        groups: dict[_Keys, tuple[list[str], list[str]]] = {}
        with self._lock:
            for hold_id, lease in self._leases.items():
                slots, opens = groups.setdefault(lease.keys, ([], []))
                if lease.slot:
                    slots.append(hold_id)
                if lease.open:
                    opens.append(hold_id)
        if not groups:
            return 0
        for _ in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for keys, (slots, opens) in groups.items():
                args: list[str | int] = [repr(float(self._lease_ttl)), len(slots), *slots, *opens]
                pipe.evalsha(self._refresh_script.sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in results):
                break
            self._redis.script_load(REFRESH)  # Redis restarted (and forgot its scripts)
        for result in results:
            if isinstance(result, Exception):
                raise result
        lost = 0
        with self._lock:  # not counting those finished since the list above was made
            for slots, opens in results:
                for hold_id in slots:
                    lost += hold_id in self._leases and self._leases[hold_id].slot
                    self._drop_lease(hold_id, slot=True)
                for hold_id in opens:  # settled by the gateway it was forwarded to, or run out
                    self._drop_lease(hold_id, slot=False)
        return lost
