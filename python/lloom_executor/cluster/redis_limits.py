"""`[openai_limits]` counts and per-backend `max_concurrent_requests` across the members, in Redis.

The same interfaces the workers of one node share through SQLite (`workers/shared_limits.py`):
`backends.usage_book.UsageBook`, `Slots` and `NodeLimits`.  An admission (budget, request
bucket, token bucket, reservation) is one Lua script; so is a settlement and a slot taken.

A member killed mid-call cannot give back what it held.  So what a member holds is kept under
its member id (reservations and slots, one hash field each), and each member keeps a liveness
key `member:<id>` with a TTL (`LEASE_MS`) that a thread of its own refreshes (`MemberLease`).
The scripts treat the holdings of a member whose key has expired as returned: its slots are
freed, its reservations count as spent (the provider may have billed the abandoned calls, as
the workers' SQLite version does).  A member id carries a random part, so a restarted member
never mistakes its dead predecessor's holdings for its own.

Money is kept in whole nano-dollars (1e-9 USD): Lua numbers are doubles, exact up to 2**53
nano-USD (about 9 million USD a day).  Reservations round up, costs to the nearest nano-dollar.
A settlement or a release that fails while Redis is away is owed and paid with this member's
next successful call, so an outage does not leak slots or reservations.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

from ..backends.usage_book import BUDGET, REQUESTS, TOKENS, BookRefusal, BookStatus, PolledSlots
from ..outcome import SharedStateUnavailable
from .redis_link import RedisLink
from .redis_state import BUCKET_LUA, BucketParams

log = logging.getLogger(__name__)

LEASE_MS = 5000  # a member silent this long is dead: its slots and reservations come back
REFRESH_SECS = 1.0  # how often a member renews its lease (and probes a link that is down)
NANO = Decimal("1e-9")

_HOLDINGS_LUA = """
local function spent(key, day)
  local row = redis.call('HMGET', key, 'day', 'nano')
  if row[1] and tonumber(row[1]) == day then return tonumber(row[2]) end
  return 0
end
local function add_spend(key, day, amount)
  redis.call('HSET', key, 'day', string.format('%d', day), 'nano', string.format('%.0f', spent(key, day) + amount))
end
-- the live members' total; a dead member's field goes (to `on_dead`, when given). The caller
-- (`self`) is alive by definition, even when its lease was lost (a Redis restarted empty).
local function live_total(hash, member_prefix, self, on_dead)
  local all, sum = redis.call('HGETALL', hash), 0
  for i = 1, #all, 2 do
    local amount = tonumber(all[i + 1])
    if all[i] ~= self and redis.call('EXISTS', member_prefix .. all[i]) == 0 then
      redis.call('HDEL', hash, all[i])
      if on_dead then on_dead(amount) end
    else
      sum = sum + amount
    end
  end
  return sum
end
local function give_back(hash, member, amount)
  local left = tonumber(redis.call('HGET', hash, member) or '0') - amount
  if left > 0 then redis.call('HSET', hash, member, string.format('%.0f', left)) else redis.call('HDEL', hash, member) end
end
"""

# KEYS: spend, reserved, requests bucket, tokens bucket. ARGV: now override, day, budget nano
# ('' = none), reserve nano, member, member prefix, mode (admit | status), 7 + 7 bucket values
# (a bucket whose rates are 0 is unused). Returns {verdict, wait, spent, reserved, req left, tok left}.
_BOOK_LUA = (
    BUCKET_LUA
    + _HOLDINGS_LUA
    + """
local now, day = clock(ARGV[1]), tonumber(ARGV[2])
local reserve, member, member_prefix, mode = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local function spend_dead(amount) if amount > 0 then add_spend(KEYS[1], day, amount) end end
local reserved = live_total(KEYS[2], member_prefix, member, spend_dead)
local s = spent(KEYS[1], day)
local a1, a2 = {}, {}
for j = 1, 7 do a1[j] = ARGV[7 + j]; a2[j] = ARGV[14 + j] end
local req, tok = bucket(KEYS[3], a1, now), bucket(KEYS[4], a2, now)
local function reply(verdict, wait) return {verdict, fmt(wait), fmt(s), fmt(reserved), fmt(req.r), fmt(tok.t)} end
if mode == 'status' then return reply('status', 0) end
if ARGV[3] ~= '' and s + reserved + reserve > tonumber(ARGV[3]) then return reply('budget', 0) end
if req.wait > 0 then return reply('requests', req.wait) end
if tok.wait > 0 then return reply('tokens', tok.wait) end
debit(KEYS[3], req, now)
debit(KEYS[4], tok, now)
if reserve > 0 then redis.call('HINCRBY', KEYS[2], member, string.format('%.0f', reserve)) end
return reply('ok', 0)
"""
)

# KEYS: spend, reserved. ARGV: day, member, reserved nano to give back, cost nano.
_SETTLE_LUA = (
    _HOLDINGS_LUA
    + """
local day = tonumber(ARGV[1])
if tonumber(ARGV[3]) > 0 then give_back(KEYS[2], ARGV[2], tonumber(ARGV[3])) end
if tonumber(ARGV[4]) ~= 0 then add_spend(KEYS[1], day, tonumber(ARGV[4])) end
return 1
"""
)

# KEYS: the slots hash. ARGV: limit, member, member prefix, slots to give back first, take (1 | 0).
# Returns {taken (1 | 0), held by live members}.
_SLOTS_LUA = (
    _HOLDINGS_LUA
    + """
if tonumber(ARGV[4]) > 0 then give_back(KEYS[1], ARGV[2], tonumber(ARGV[4])) end
local held = live_total(KEYS[1], ARGV[3], ARGV[2], nil)
if ARGV[5] == '1' and held < tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
  return {1, held + 1}
end
return {0, held}
"""
)


def to_nano(amount: Decimal, rounding: str) -> int:
    return int((amount / NANO).to_integral_value(rounding=rounding))


class MemberLease:
    """This member's liveness key, renewed every `REFRESH_SECS` by a daemon thread (so a busy
    event loop does not make a member look dead).  Each renewal also probes a link that is down,
    so the shared state comes back without traffic."""

    def __init__(self, link: RedisLink, prefix: str, member: str, *, lease_ms: int = LEASE_MS) -> None:
        self.link = link
        self.member = member
        self.key = f"{prefix}member:{member}"
        self.member_prefix = f"{prefix}member:"
        self.lease_ms = lease_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew(self) -> bool:
        try:
            self.link.call(lambda c: c.set(self.key, str(os.getpid()), px=self.lease_ms))
        except SharedStateUnavailable:
            return False
        return True

    def start(self) -> None:
        self.renew()  # before the first admission: the scripts must see this member alive
        self._thread = threading.Thread(target=self._run, name="redis-member-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_SECS):
            self.renew()

    def stop(self) -> None:
        """Stop renewing and drop the key: what this member still holds comes back at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.link.call(lambda c: c.delete(self.key))
        except SharedStateUnavailable:
            pass  # it expires by itself


class RedisUsageBook:
    """`UsageBook` in Redis: one admission is one script across every member."""

    def __init__(
        self,
        link: RedisLink,
        lease: MemberLease,
        prefix: str,
        scope: str,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
    ) -> None:
        self.link = link
        self.lease = lease
        base = f"{prefix}lim:{scope}:"
        self.keys = [base + "spend", base + "reserved", base + "requests", base + "tokens"]
        self._requests = BucketParams(requests_per_minute, None)
        self._tokens = BucketParams(None, tokens_per_minute)
        self._admit = link.client.register_script(_BOOK_LUA)
        self._settle = link.client.register_script(_SETTLE_LUA)
        self._owed: collections.deque[tuple[int, int, int]] = collections.deque()  # (day, reserved, cost) not yet settled

    def _run(self, mode: str, tokens: int, reserve: int, budget: int | None, day: int) -> list[Any]:
        args = ["", str(day), "" if budget is None else str(budget), str(reserve), self.lease.member, self.lease.member_prefix]
        args += [mode, *self._requests.args(1, 0), *self._tokens.args(0, tokens)]
        self._pay_owed()
        reply: list[Any] = self.link.call(lambda _c: self._admit(keys=self.keys, args=args))
        return [v.decode() if isinstance(v, bytes) else v for v in reply]

    def admit(self, tokens: int, reserve: Decimal, budget: Decimal | None, day: int, budget_wait: float) -> BookRefusal | None:
        nano_budget = None if budget is None else to_nano(budget, ROUND_FLOOR)
        verdict, wait, spent, reserved, _, _ = self._run("admit", tokens, to_nano(reserve, ROUND_CEILING), nano_budget, day)
        if verdict == "ok":
            return None
        if verdict == "budget":
            return BookRefusal(BUDGET, budget_wait, Decimal(spent) * NANO, Decimal(reserved) * NANO)
        return BookRefusal(REQUESTS if verdict == "requests" else TOKENS, float(wait))

    def settle(self, reserved: Decimal, cost: Decimal, day: int) -> None:
        if not (reserved or cost):
            return
        self._owed.append((day, to_nano(reserved, ROUND_CEILING), to_nano(cost, ROUND_HALF_EVEN)))
        try:
            self._pay_owed()
        except SharedStateUnavailable:
            log.warning("shared state: a settlement is owed until redis is back (%d pending)", len(self._owed))

    def _pay_owed(self) -> None:
        while self._owed:
            day, reserved, cost = self._owed[0]
            self._settle_one([str(day), self.lease.member, str(reserved), str(cost)])
            self._owed.popleft()

    def _settle_one(self, args: list[str]) -> None:
        self.link.call(lambda _c: self._settle(keys=self.keys[:2], args=args))

    def status(self, day: int) -> BookStatus:
        _, _, spent, reserved, requests, tokens = self._run("status", 0, 0, None, day)
        return BookStatus(
            float(requests) if self._requests.req_rate else None,
            float(tokens) if self._tokens.tok_rate else None,
            Decimal(spent) * NANO,
            Decimal(reserved) * NANO,
        )


class RedisSlots(PolledSlots):
    """`Slots` in Redis: at most `limit` holders among all the members (and their workers)."""

    def __init__(self, link: RedisLink, lease: MemberLease, prefix: str, scope: str, limit: int) -> None:
        super().__init__()
        self.link = link
        self.lease = lease
        self.key = f"{prefix}slots:{scope}"
        self.limit = limit
        self._script = link.client.register_script(_SLOTS_LUA)
        self._owed = 0  # releases that failed while redis was away

    def _run(self, take: bool) -> tuple[bool, int]:
        owed = self._owed
        args = [str(self.limit), self.lease.member, self.lease.member_prefix, str(owed), "1" if take else "0"]
        taken, held = self.link.call(lambda _c: self._script(keys=[self.key], args=args))
        self._owed -= owed
        return bool(taken), int(held)

    def try_take(self) -> bool:
        return self._run(True)[0]

    def _give_back(self) -> None:
        """A release Redis cannot take now is owed (paid with this member's next call)."""
        self._owed += 1
        with contextlib.suppress(SharedStateUnavailable):
            self._run(False)

    def held(self) -> int:
        """Slots held now by all the live members."""
        return self._run(False)[1]


class RedisNodeLimits:
    """`backends.usage_book.NodeLimits` of one member: books and slots in Redis."""

    def __init__(self, link: RedisLink, lease: MemberLease, prefix: str) -> None:
        self.link = link
        self.lease = lease
        self.prefix = prefix

    def book(self, scope: str, requests_per_minute: int | None, tokens_per_minute: int | None) -> RedisUsageBook:
        return RedisUsageBook(self.link, self.lease, self.prefix, scope, requests_per_minute, tokens_per_minute)

    def slots(self, scope: str, limit: int) -> RedisSlots:
        return RedisSlots(self.link, self.lease, self.prefix, scope, limit)


def member_id(node_id: str, worker: int) -> str:
    """`node_id/worker/random`: unique per process start (see the module doc)."""
    return f"{node_id}/{worker}/{os.urandom(4).hex()}"


__all__ = ["LEASE_MS", "MemberLease", "RedisNodeLimits", "RedisSlots", "RedisUsageBook", "member_id"]
