"""The Lua scripts of ``accounts.redis_counters`` (the data layout is described there).

Each runs alone in Redis: one EVALSHA is one atomic step.  ``PRELUDE`` starts every
script that reads or counts a key's windows: it prunes run-out leases (by the Redis
server's clock) and the windows (by the caller's ``now``), and seeds the day once.
"""

from __future__ import annotations

WINDOW_TTL = 120
LOADS_TTL = 7200
DAY_TTL = 172800

# Every script but settle's and refresh's starts with this: KEYS are a key id's _Keys,
# ARGV[1] now, ARGV[2] today's day number, ARGV[3] the seed ("" or "tokens bytes
# load_time...").  Numbers go back to Redis through f(): Lua's own conversion keeps
# only 14 digits.
PRELUDE = f"""
local WINDOW_TTL, LOADS_TTL, DAY_TTL = {WINDOW_TTL}, {LOADS_TTL}, {DAY_TTL}
local req, tok, amt, open, slots, loads, day = unpack(KEYS)
local now, today, seed = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local function f(x) return string.format('%.17g', x) end
local function amount(id) return tonumber(redis.call('HGET', amt, id) or '0') end
local clock = redis.call('TIME')
local wall = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', slots, '-inf', f(wall))
redis.call('ZREMRANGEBYSCORE', open, '-inf', f(wall))
redis.call('ZREMRANGEBYSCORE', req, '-inf', f(now - 60))
redis.call('ZREMRANGEBYSCORE', loads, '-inf', f(now - 3600))
for _, id in ipairs(redis.call('ZRANGEBYSCORE', tok, '-inf', f(now - 60))) do
  if not redis.call('ZSCORE', open, id) then
    redis.call('ZREM', tok, id)
    redis.call('HDEL', amt, id)
  end
end
if tonumber(redis.call('HGET', day, 'day') or '-1') < today then
  if seed == '' then return {{'seed'}} end
  local words = string.gmatch(seed, '%S+')
  local tokens, bytes = tonumber(words()), words()
  for _, id in ipairs(redis.call('ZRANGE', open, 0, -1)) do tokens = tokens + amount(id) end
  redis.call('HSET', day, 'day', ARGV[2], 'tokens', string.format('%d', tokens), 'bytes', bytes)
  redis.call('EXPIRE', day, DAY_TTL)
  if redis.call('EXISTS', loads) == 0 then
    local n = 0
    for at in words do
      n = n + 1
      redis.call('ZADD', loads, at, 'ledger:' .. n)
    end
    if n > 0 then redis.call('EXPIRE', loads, LOADS_TTL) end
  end
end
"""

SNAPSHOT = (
    PRELUDE
    + """
local tokens = {}
local entries = redis.call('ZRANGE', tok, 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  tokens[#tokens + 1] = entries[i + 1]
  tokens[#tokens + 1] = tostring(amount(entries[i]))
  tokens[#tokens + 1] = redis.call('ZSCORE', open, entries[i]) and '1' or '0'
end
return {'ok', redis.call('ZRANGE', req, 0, -1, 'WITHSCORES'), tokens, redis.call('ZCARD', slots),
  redis.call('HGET', day, 'tokens') or '0', redis.call('ZRANGE', loads, 0, -1, 'WITHSCORES'),
  redis.call('HGET', day, 'bytes') or '0'}
"""
)

# ARGV[4] hold id, [5] tokens, [6] "1" when it loads a model, [7] lease ttl, [8..12]
# the CHECKED limits ("" = unlimited).
ADMIT = (
    PRELUDE
    + """
local id, tokens, load, ttl = ARGV[4], tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local function limit(i) if ARGV[i] == '' then return nil end return tonumber(ARGV[i]) end
local l = limit(8)
if l and (l <= 0 or redis.call('ZCARD', req) >= l) then return {'raced', 'requests_per_minute'} end
l = limit(9)
if l then
  local used = 0  -- what is left after pruning: settled in the window, or open
  for _, hold in ipairs(redis.call('ZRANGE', tok, 0, -1)) do used = used + amount(hold) end
  if l <= 0 or used + math.max(0, math.min(tokens, l)) > l then
    return {'raced', 'tokens_per_minute'}
  end
end
l = limit(10)
if l and (l <= 0 or redis.call('ZCARD', slots) >= l) then return {'raced', 'max_concurrent'} end
l = limit(11)
if l and (l <= 0 or tonumber(redis.call('HGET', day, 'tokens') or '0') + tokens > l) then
  return {'raced', 'tokens_per_day'}
end
l = limit(12)
if load and l and (l <= 0 or redis.call('ZCARD', loads) >= l) then
  return {'raced', 'loads_per_hour'}
end
local expiry = f(wall + ttl)
redis.call('ZADD', req, ARGV[1], id)
redis.call('EXPIRE', req, WINDOW_TTL)
redis.call('ZADD', slots, expiry, id)
redis.call('ZADD', open, expiry, id)
redis.call('ZADD', tok, ARGV[1], id)
redis.call('HSET', amt, id, ARGV[5])
for _, key in ipairs({slots, open, tok, amt}) do
  redis.call('EXPIRE', key, WINDOW_TTL + math.ceil(2 * ttl))
end
if load then
  redis.call('ZADD', loads, ARGV[1], id)
  redis.call('EXPIRE', loads, LOADS_TTL)
end
redis.call('HINCRBY', day, 'tokens', ARGV[5])
redis.call('EXPIRE', day, DAY_TTL)
return {'ok'}
"""
)

# ARGV[4] bytes.
CHARGE_DOWNLOAD = (
    PRELUDE
    + """
redis.call('HINCRBY', day, 'bytes', ARGV[4])
redis.call('EXPIRE', day, DAY_TTL)
return {'ok'}
"""
)

# ARGV[1] hold id, [2] real tokens.  Only an open hold whose lease runs: the first
# settlement counts, whichever gateway sends it.  The hold keeps its time; the day total
# (whatever day it is on now, as in MemoryCounters) takes the difference.
SETTLE = """
local _, _, amt, open, _, _, day = unpack(KEYS)
local id, real = ARGV[1], tonumber(ARGV[2])
local clock = redis.call('TIME')
local expiry = redis.call('ZSCORE', open, id)
if not expiry then return 0 end
redis.call('ZREM', open, id)
local reserved = redis.call('HGET', amt, id)
if tonumber(expiry) <= tonumber(clock[1]) + tonumber(clock[2]) / 1e6 or not reserved then
  return 0  -- its lease ran out: settled at the reservation already
end
redis.call('HSET', amt, id, ARGV[2])
if redis.call('EXISTS', day) == 1 then
  local left = tonumber(redis.call('HGET', day, 'tokens') or '0') + real - tonumber(reserved)
  redis.call('HSET', day, 'tokens', string.format('%d', math.max(0, left)))
end
return 1
"""

# ARGV[1] lease ttl, [2] how many slot ids follow, then slot ids, then open hold ids.
# A lease already run out, given back or settled (by another gateway) meanwhile is not
# brought back: the answer lists those slots, and those holds.
REFRESH = f"""
local _, tok, amt, open, slots = unpack(KEYS)
local ttl, nslots = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local wall = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local expiry = string.format('%.17g', wall + ttl)
local lost = {{{{}}, {{}}}}
for i = 3, #ARGV do
  local which = (i - 2 <= nslots) and 1 or 2
  local key = (which == 1) and slots or open
  local score = redis.call('ZSCORE', key, ARGV[i])
  if score and tonumber(score) > wall then
    redis.call('ZADD', key, expiry, ARGV[i])
  else
    table.insert(lost[which], ARGV[i])
  end
end
for _, key in ipairs({{slots, open, tok, amt}}) do
  redis.call('EXPIRE', key, {WINDOW_TTL} + math.ceil(2 * ttl))
end
return lost
"""
