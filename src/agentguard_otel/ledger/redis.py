"""Redis ledger (``redis://HOST:PORT/DB``, ``rediss://`` for TLS): the distributed ledger of a fleet.

Every operation is ONE server-side Lua script (EVALSHA; redis-py reloads it after a server restart
answers NOSCRIPT), so it is atomic across every process of every host, and it reads the time from
the Redis server (``TIME``), never from the calling host: skewed host clocks do not matter.

Calendar windows in a time zone need the zone's rules (DST), which Lua does not have. The client
therefore sends, for each calendar counter, the boundaries of the windows around its *estimate*
of the server's clock (its own clock plus the offset it last learned from the server, +/-
:data:`CLOCK_MARGIN_SECONDS`), computed with the same :func:`window_slot` as every other backend.
The script picks the window that contains the server's ``TIME``; in the rare case none does (a
host clock off by more than the margin), it changes nothing and answers with the server time,
and the client learns the offset and sends fresh boundaries. So a reservation is one round trip,
and a window is always the one the zone's calendar gives for the *server's* instant — DST gaps,
repeated hours and 23/25-hour days included. Rolling windows need only a length and are slid in
Lua.

Holds carry ``expires_at`` (server time) in a sorted set; every script first takes the holds whose
time is up off their counters, so a dead host leaks nothing. An expired hold is kept
:data:`HOLD_RETENTION_SECONDS` so that a late settlement still records its spend. Counter keys get
a Redis expiry (never shortened) that outlives their window, every hold on them and the retention,
so a fleet's key space stays bounded without a collector process.

Money stays exact: Redis stores integers (HINCRBY, 64-bit), and the script compares totals as
(billions, remainder) pairs, because Lua numbers are doubles. One reservation may hold at most
:data:`MAX_AMOUNT_NANO` (about $9 million).

Every Redis error (refused or lost connection, timeout, server loading, out of memory, read-only
replica) raises :class:`LedgerUnavailable`; the guard then applies the policy's ``failure_mode``.
A command is retried once on a connection error (a pooled connection that went stale while the
server restarted); that is safe because every script is idempotent for its hold id, a retried
reservation included.

Key layout under the prefix ``P`` (default ``agentguard:``): ``P c:<start>:<key>`` counter hash
(spent, held, limit, tz; start -1 = rolling), ``P e:<key>`` rolling spend events (zset by time),
``P m:<key>`` the key's latest window/zone/limit, ``P keys`` every key (lexicographic zset),
``P h:<hold>`` a hold, ``P exp`` live holds by expiry. One Redis primary (Redis Cluster is not
supported: a script touches keys it computes).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agentguard_otel.errors import ConfigError, LedgerUnavailable
from agentguard_otel.ledger.base import (
    ADJUSTABLE_SECONDS,
    HOLD_RETENTION_SECONDS,
    ROLLING_SECONDS,
    Clock,
    CounterSpec,
    CounterState,
    Ledger,
    Reservation,
    Slot,
    assess,
    check_counters,
    check_nano,
    check_ttl,
    new_hold_id,
    window_slot,
    window_start_datetime,
)
from agentguard_otel.money import MAX_AMOUNT_NANO

#: The client's estimate of the server clock may be this far off before a reservation needs a
#: second round trip (it covers network latency and a host clock that drifted since it learned).
CLOCK_MARGIN_SECONDS = 2.0

#: Largest amount one reservation or settlement may carry: Redis counters are signed 64-bit and a
#: script that fails half-way is not rolled back, so amounts are bounded far below overflow.

DEFAULT_TIMEOUT_SECONDS = 1.0
DEFAULT_PREFIX = "agentguard:"

# The longest calendar window (a 31-day month, plus an hour of DST) is shorter than this.
_PROBE_SECONDS = 32 * 86_400 + 7_200

_PRELUDE = f"local RETENTION = {HOLD_RETENTION_SECONDS!r}\n" + r"""
local P = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])  -- tests only: a fake clock
end
local BASE = 1000000000

local function fmt(x) return string.format('%.17g', x) end

-- exact non-negative integers as {billions, remainder}: Lua numbers are doubles
local function big(s)
  local n = #s
  if n <= 9 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))}
end
local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= BASE then return {hi + 1, lo - BASE} end
  return {hi, lo}
end
local function over(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end

-- a key lives at least `seconds` more; its expiry is never shortened
local function keep(key, seconds)
  if redis.call('TTL', key) < seconds then redis.call('EXPIRE', key, math.ceil(seconds)) end
end

local function unhold(counters, amount)
  if amount == '0' then return end
  for _, c in ipairs(counters) do
    if redis.call('EXISTS', c[1]) == 1 then redis.call('HINCRBY', c[1], 'held', '-' .. amount) end
  end
end

local function negated(amount)
  if string.sub(amount, 1, 1) == '-' then return string.sub(amount, 2) end
  return '-' .. amount
end

-- spend events that slid out of a rolling window leave its total
local function prune(key, ck, length)
  local ek = P .. 'e:' .. key
  local cutoff = fmt(now - length)
  local gone = redis.call('ZRANGEBYSCORE', ek, '-inf', cutoff)
  for _, member in ipairs(gone) do
    redis.call('HINCRBY', ck, 'spent', negated(string.match(member, ':(-?%d+)$')))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', ek, '-inf', cutoff) end
end

-- take a hold: the amount still held ('0' once expired) and its counters; nil if unknown
local function take(id)
  local hk = P .. 'h:' .. id
  local h = redis.call('HMGET', hk, 'amount', 'live', 'expires', 'counters')
  if not h[1] then return nil end
  redis.call('DEL', hk)
  redis.call('ZREM', P .. 'exp', id)
  if h[2] == '1' then return h[1], cjson.decode(h[4]) end
  if tonumber(h[3]) <= now - RETENTION then return nil end
  return '0', cjson.decode(h[4])
end

-- holds whose time is up stop counting; they are kept (not live) for a late settlement
local due = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', fmt(now))
for _, id in ipairs(due) do
  local hk = P .. 'h:' .. id
  local h = redis.call('HMGET', hk, 'amount', 'counters')
  if h[1] then
    unhold(cjson.decode(h[2]), h[1])
    redis.call('HSET', hk, 'live', '0')
    redis.call('EXPIRE', hk, math.ceil(RETENTION) + 60)
  end
end
if #due > 0 then redis.call('ZREMRANGEBYSCORE', P .. 'exp', '-inf', fmt(now)) end
"""

# ARGV: prefix, now, hold id, amount, ttl, n, then per counter: key, limit, enforce, window, zone,
# rolling length (0: calendar), boundary count, boundaries. Reply: status, now, admitted, then per
# counter: window start, spent, held (before the hold; after it for "again").
_RESERVE = _PRELUDE + r"""
local id, amount, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local hk = P .. 'h:' .. id
local counters, i = {}, 7
for _ = 1, tonumber(ARGV[6]) do
  local length, nb = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  local start, life = '-1', length
  if length == 0 then
    start = nil
    for j = i + 7, i + 5 + nb do
      if tonumber(ARGV[j]) <= now and now < tonumber(ARGV[j + 1]) then
        start, life = ARGV[j], tonumber(ARGV[j + 1]) - now
      end
    end
    if not start then return {'skew', fmt(now)} end  -- nothing written but expiries
  end
  counters[#counters + 1] = {key = ARGV[i], limit = ARGV[i + 1], enforce = ARGV[i + 2], window = ARGV[i + 3],
                             tz = ARGV[i + 4], length = length, start = start, life = life,
                             ck = P .. 'c:' .. start .. ':' .. ARGV[i]}
  i = i + 7 + nb
end
local again = redis.call('EXISTS', hk) == 1  -- a retried reservation whose first attempt got through
local reply, denied = {again and 'again' or 'ok', fmt(now), '0'}, false
for _, c in ipairs(counters) do
  if c.length > 0 then prune(c.key, c.ck, c.length) end
  local v = redis.call('HMGET', c.ck, 'spent', 'held')
  local spent, held = v[1] or '0', v[2] or '0'
  if c.enforce == '1' and over(add(add(big(spent), big(held)), big(amount)), big(c.limit)) then denied = true end
  reply[#reply + 1] = c.start
  reply[#reply + 1] = spent
  reply[#reply + 1] = held
end
if again then reply[3] = '1' return reply end
if denied then return reply end
reply[3] = '1'
local stored = {}
for _, c in ipairs(counters) do
  local mk, lives = P .. 'm:' .. c.key, c.life + ttl + RETENTION
  redis.call('HINCRBY', c.ck, 'held', amount)
  redis.call('HSET', c.ck, 'limit', c.limit, 'tz', c.tz)
  redis.call('HSET', mk, 'window', c.window, 'tz', c.tz, 'limit', c.limit, 'length', c.length, 'start', c.start)
  keep(c.ck, lives)
  keep(mk, lives)
  redis.call('ZADD', P .. 'keys', 0, c.key)
  stored[#stored + 1] = {c.ck, c.key, c.start, c.length}
end
redis.call('HSET', hk, 'amount', amount, 'live', '1', 'expires', fmt(now + ttl), 'counters', cjson.encode(stored))
redis.call('ZADD', P .. 'exp', fmt(now + ttl), id)
return reply
"""

# ARGV: prefix, now, hold id, actual, adjustable ('1'). Reply: now, then per counter: key, start,
# spent, held, limit, zone.
_SETTLE = _PRELUDE + f"local ADJUSTABLE = {ADJUSTABLE_SECONDS!r}\n" + r"""
local id, actual = ARGV[3], ARGV[4]
local reply = {fmt(now)}
local held, counters = take(id)
if not held then return reply end
unhold(counters, held)
if ARGV[5] == '1' then
  local sk = P .. 's:' .. id
  redis.call('HSET', sk, 'amount', actual, 'at', fmt(now), 'counters', cjson.encode(counters))
  redis.call('EXPIRE', sk, math.ceil(ADJUSTABLE))
end
for _, c in ipairs(counters) do
  local ck, key, length = c[1], c[2], c[4]
  if length > 0 then
    prune(key, ck, length)
    if actual ~= '0' then
      redis.call('ZADD', P .. 'e:' .. key, fmt(now), id .. ':' .. actual)
      keep(P .. 'e:' .. key, length + RETENTION)
    end
  end
  redis.call('HINCRBY', ck, 'spent', actual)
  keep(ck, length + RETENTION)
  local v = redis.call('HMGET', ck, 'spent', 'held', 'limit', 'tz')
  for _, x in ipairs({key, c[3], v[1], v[2], v[3], v[4]}) do reply[#reply + 1] = x end
end
return reply
"""

# ARGV: prefix, now, hold id, actual. Reply as _SETTLE's, for the counters still there.
_ADJUST = _PRELUDE + r"""
local sk = P .. 's:' .. ARGV[3]
local s = redis.call('HMGET', sk, 'amount', 'at', 'counters')
local reply = {fmt(now)}
if not s[1] then return reply end
redis.call('DEL', sk)
local at = tonumber(s[2])
-- both amounts are at most 2^53, so their difference is exact in a double
local delta = string.format('%d', tonumber(ARGV[4]) - tonumber(s[1]))
for _, c in ipairs(cjson.decode(s[3])) do
  local ck, key, length = c[1], c[2], c[4]
  if redis.call('EXISTS', ck) == 1 then
    local add = delta
    if length > 0 then
      prune(key, ck, length)
      if at <= now - length then
        add = '0'  -- the spend it corrects has slid out of the window already
      elseif delta ~= '0' then
        redis.call('ZADD', P .. 'e:' .. key, fmt(at), ARGV[3] .. ':adj:' .. delta)
      end
    end
    redis.call('HINCRBY', ck, 'spent', add)
    local v = redis.call('HMGET', ck, 'spent', 'held', 'limit', 'tz')
    for _, x in ipairs({key, c[3], v[1], v[2], v[3], v[4]}) do reply[#reply + 1] = x end
  end
end
return reply
"""

# ARGV: prefix, now, hold id.
_RELEASE = _PRELUDE + r"""
local held, counters = take(ARGV[3])
if held then unhold(counters, held) end
return {fmt(now)}
"""

# ARGV: prefix, now, hold id, ttl. Only a live hold is renewed: an expired one stays expired.
_RENEW = _PRELUDE + r"""
local hk = P .. 'h:' .. ARGV[3]
local h = redis.call('HMGET', hk, 'live', 'counters')
if h[1] == '1' then
  local ttl = tonumber(ARGV[4])
  redis.call('HSET', hk, 'expires', fmt(now + ttl))
  redis.call('ZADD', P .. 'exp', fmt(now + ttl), ARGV[3])
  for _, c in ipairs(cjson.decode(h[2])) do keep(c[1], ttl + RETENTION) end
end
return {fmt(now)}
"""

# ARGV: prefix, now, key prefix. Reply: now, then per key: key, window, zone, limit, rolling length,
# latest window start, spent and held in that window.
_STATES = _PRELUDE + r"""
local pfx = ARGV[3]
local lo, hi = '-', '+'
if pfx ~= '' then lo, hi = '[' .. pfx, '(' .. pfx .. '\255' end  -- no UTF-8 text holds byte 255
local reply = {fmt(now)}
for _, key in ipairs(redis.call('ZRANGEBYLEX', P .. 'keys', lo, hi)) do
  local m = redis.call('HMGET', P .. 'm:' .. key, 'window', 'tz', 'limit', 'length', 'start')
  if not m[1] then
    redis.call('ZREM', P .. 'keys', key)  -- idle for longer than its window and the retention
  else
    local ck, length = P .. 'c:' .. m[5] .. ':' .. key, tonumber(m[4])
    if length > 0 then prune(key, ck, length) end
    local v = redis.call('HMGET', ck, 'spent', 'held')
    for _, x in ipairs({key, m[1], m[2], m[3], m[4], m[5], v[1] or '0', v[2] or '0'}) do
      reply[#reply + 1] = x
    end
  end
end
return reply
"""


@functools.lru_cache(maxsize=1024)
def window_end(window: str, timezone: str, start: int) -> int:
    """The first second after the calendar window that starts at ``start`` (found by bisection on
    :func:`window_slot`, so it agrees with it by construction, DST transitions included)."""
    inside, outside = start, start + _PROBE_SECONDS
    while outside - inside > 1:
        middle = (inside + outside) // 2
        if window_slot(window, timezone, False, middle).start == start:
            inside = middle
        else:
            outside = middle
    return outside


def window_bounds(window: str, timezone: str, earliest: float, latest: float) -> list[int]:
    """Ascending boundaries of the consecutive calendar windows that cover [earliest, latest]."""
    bounds = [window_slot(window, timezone, False, earliest).start]
    while True:
        bounds.append(window_end(window, timezone, bounds[-1]))
        if bounds[-1] > latest:
            return bounds


def _check_amount(value: int, what: str) -> None:
    check_nano(value, what)
    if value > MAX_AMOUNT_NANO:
        raise ValueError(f"{what} must be at most {MAX_AMOUNT_NANO} nano-USD on the Redis ledger, got {value}")


def _counter_states(reply: list[str]) -> tuple[CounterState, ...]:
    """A settle or adjust script's reply (the server's time, then six fields per counter)."""
    _now, *rows = reply
    return tuple(CounterState(key, window_start_datetime(int(start), tz), int(spent), int(held), int(limit))
                 for key, start, spent, held, limit, tz in zip(*[iter(rows)] * 6, strict=True))


# Marks live at ``P k:<window>\x1f<label>\x1f<key>``: windows and labels are ours (no separator in
# them), so the key, free text last, needs no escaping. A plain SET NX PX: atomic, and it expires alone.
_MARK_SEPARATOR = "\x1f"


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def parse_redis_url(url: str) -> tuple[str, float, str]:
    """Split a ledger URL into the URL redis-py connects to, the timeout and the key prefix.

    Options (query string): ``timeout`` in seconds for connecting and for each command (default
    1), ``prefix`` for every key (default ``agentguard:``). ConfigError for anything else.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"Redis ledger URL must look like redis://HOST:PORT/DB, got {url!r}")
    try:
        options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        if parts.port == 0:
            raise ValueError("port 0")
    except ValueError as exc:
        raise ConfigError(f"malformed Redis ledger URL {url!r}: {exc}") from exc
    unknown = sorted(set(options) - {"timeout", "prefix"})
    if unknown or any(len(values) != 1 for values in options.values()):
        raise ConfigError(f"Redis ledger URL options are timeout= and prefix= (once each), got {parts.query!r}")
    timeout = DEFAULT_TIMEOUT_SECONDS
    if "timeout" in options:
        try:
            timeout = float(options["timeout"][0])
        except ValueError:
            timeout = 0.0
        if not 0 < timeout < float("inf"):
            raise ConfigError("Redis ledger timeout must be a positive number of seconds, "
                              f"got {options['timeout'][0]!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"Redis ledger database must be a number, got {path!r} in {url!r}")
    prefix = options.get("prefix", [DEFAULT_PREFIX])[0]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), timeout, prefix


class RedisLedger(Ledger):
    """Ledger in one Redis server, shared by every process of every host that names it.

    ``clock`` exists for tests only: it replaces the server's ``TIME`` so the contract suite can
    cross windows and expire holds without sleeping. In production it is None and the server's
    clock is the only clock.
    """

    remote = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 prefix: str = DEFAULT_PREFIX, clock: Clock | None = None) -> None:
        # A pool per ledger: thread-safe, and redis-py drops inherited connections after a fork.
        self._pool = redis.ConnectionPool.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds,
            decode_responses=True, retry=Retry(NoBackoff(), 1))
        client = redis.Redis(connection_pool=self._pool)
        kwargs = self._pool.connection_kwargs
        self._where = f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"
        self._prefix = prefix
        self._clock = clock
        self._offset = 0.0  # server clock minus this host's clock, as last seen
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._adjust = client.register_script(_ADJUST)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._states = client.register_script(_STATES)
        self._client = client

    @property
    def location(self) -> str:
        return f"redis server {self._where} (key prefix {self._prefix!r})"

    @classmethod
    def from_url(cls, url: str) -> RedisLedger:
        """The ledger a ``redis://`` / ``rediss://`` URL names (see :func:`parse_redis_url`)."""
        target, timeout, prefix = parse_redis_url(url)
        return cls(target, timeout_seconds=timeout, prefix=prefix)

    def reserve(self, counters: Sequence[CounterSpec], amount_nano: int, ttl_seconds: float) -> Reservation:
        specs = check_counters(counters)
        _check_amount(amount_nano, "amount_nano")
        check_ttl(ttl_seconds)
        hold_id = new_hold_id()
        for _attempt in range(3):
            now = self._clock() if self._clock is not None else time.time() + self._offset
            margin = 0.0 if self._clock is not None else CLOCK_MARGIN_SECONDS
            args: list[str | int] = [hold_id, amount_nano, repr(float(ttl_seconds)), len(specs)]
            for spec in specs:
                bounds = [] if spec.rolling else window_bounds(spec.window, spec.timezone, now - margin, now + margin)
                args += [spec.key, spec.limit_nano, int(spec.enforce), spec.window, spec.timezone,
                         ROLLING_SECONDS[spec.window] if spec.rolling else 0, len(bounds), *bounds]
            status, server_now, *reply = self._run(self._reserve, self._now(), args)
            if status == "skew":
                self._offset = float(server_now) - time.time()
                continue
            admitted, *rows = reply
            slots = [Slot(int(start), None) for start in rows[0::3]]
            totals = [(int(spent), int(held)) for spent, held in zip(rows[1::3], rows[2::3], strict=True)]
            if status == "again":
                states = tuple(CounterState(spec.key, window_start_datetime(slot.start, spec.timezone), spent,
                                            held, spec.limit_nano)
                               for spec, slot, (spent, held) in zip(specs, slots, totals, strict=True))
                return Reservation(True, hold_id, (), states)
            reservation = assess(specs, slots, totals, amount_nano, lambda: hold_id)
            if reservation.admitted != (admitted == "1"):
                raise AssertionError("the Redis script and assess() disagree on a reservation")
            return reservation
        raise LedgerUnavailable(f"Redis ledger {self._where}: the server clock keeps moving away from this host's")

    def settle(self, hold_id: str, actual_nano: int, *, adjustable: bool = False) -> tuple[CounterState, ...]:
        _check_amount(actual_nano, "actual_nano")
        return _counter_states(self._run(self._settle, self._now(), [hold_id, actual_nano, "1" if adjustable else ""]))

    def adjust(self, hold_id: str, actual_nano: int) -> tuple[CounterState, ...]:
        _check_amount(actual_nano, "actual_nano")
        return _counter_states(self._run(self._adjust, self._now(), [hold_id, actual_nano]))

    def release(self, hold_id: str) -> None:
        self._run(self._release, self._now(), [hold_id])

    def renew(self, hold_id: str, ttl_seconds: float) -> None:
        check_ttl(ttl_seconds)
        self._run(self._renew, self._now(), [hold_id, repr(float(ttl_seconds))])

    def states(self, key_prefix: str = "") -> list[CounterState]:
        server_now, *rows = self._run(self._states, self._now(), [key_prefix])
        now = float(server_now)
        states: list[CounterState] = []
        for key, window, tz, limit, length, start, spent, held in zip(*[iter(rows)] * 8, strict=True):
            slot = window_slot(window, tz, int(length) > 0, now)
            current = slot.start == int(start)
            states.append(CounterState(key, window_start_datetime(slot.start, tz), int(spent) if current else 0,
                                       int(held) if current else 0, int(limit), window))
        return states

    def mark(self, key: str, window: str, label: str, ttl_seconds: float) -> bool:
        check_ttl(ttl_seconds)
        name = f"{self._prefix}k:{_MARK_SEPARATOR.join((window, label, key))}"
        token = new_hold_id()  # whose mark it is: a SET retried after a lost reply still knows it won
        try:
            if self._client.set(name, token, nx=True, px=max(1, int(ttl_seconds * 1000))):
                return True
            return bool(self._client.get(name) == token)
        except redis.RedisError as exc:
            raise LedgerUnavailable(f"Redis ledger {self._where}: {type(exc).__name__}: {exc}") from exc

    def marks(self, key_prefix: str = "") -> dict[tuple[str, str], frozenset[str]]:
        found: dict[tuple[str, str], set[str]] = {}
        start = f"{self._prefix}k:"
        try:
            names = list(self._client.scan_iter(match=f"{_glob_escape(start)}*", count=1000))
        except redis.RedisError as exc:
            raise LedgerUnavailable(f"Redis ledger {self._where}: {type(exc).__name__}: {exc}") from exc
        for name in names:
            window, label, key = name[len(start):].split(_MARK_SEPARATOR, 2)
            if key.startswith(key_prefix):
                found.setdefault((key, window), set()).add(label)
        return {where: frozenset(labels) for where, labels in found.items()}

    def close(self) -> None:
        self._pool.disconnect()

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    def _run(self, script: Any, now: float | None, args: list[str | int]) -> list[str]:
        """Run one script; every Redis failure becomes LedgerUnavailable."""
        try:
            reply: list[str] = script(args=[self._prefix, "" if now is None else repr(float(now)), *args])
        except redis.RedisError as exc:
            raise LedgerUnavailable(f"Redis ledger {self._where}: {type(exc).__name__}: {exc}") from exc
        return reply
