"""The Lua scripts run inside Redis: each is one atomic step on one Cluster slot, with Redis's own clock.

Times come from `TIME` inside the script, so every replica agrees on what has expired and an expired
registration is never returned, whatever the replicas' clocks say. Stored records begin with their expiry
in EXPIRY_DIGITS digits (rendezvous/record.py owns that format; the width is handed in from there).
"""
from rendezvous.record import EXPIRY_DIGITS

_D = str(EXPIRY_DIGITS)

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: counter.  ARGV: window_ms.  -> {count, ms until the window resets}
RATE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"""

# KEYS: peer rate counter, nonce key, peer namespace index.
# ARGV: rate limit, window_ms, nonce_ttl_ms, namespace ('' for none), ttl_ms, max registrations per peer.
# -> {status, detail}: 'rate' (detail = retry ms), 'replay', 'peer_cap', or 'ok' (detail 1 if the namespace
#    is new to the peer's index, so a later refusal can undo exactly that).
ADMIT = _NOW + """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return {'rate', redis.call('PTTL', KEYS[1])} end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return {'replay', 0} end
if ARGV[4] == '' then return {'ok', 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local known = redis.call('ZSCORE', KEYS[3], ARGV[4])
if not known and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return {'peer_cap', 0} end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[4])
local latest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[3], latest[2])
if known then return {'ok', 0} end
return {'ok', 1}
"""

_PURGE_EXPIRED = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[3], unpack(dead))
end
"""

# KEYS: namespace expiries, sequence, records.  ARGV: member, peer object fragment, ttl_ms, max peers.
# -> {1, expiry_ms, replaced 0/1} or {0, 0, 0} when the namespace is full.
REGISTER = _NOW + _PURGE_EXPIRED + """
local member = ARGV[1]
local previous = redis.call('ZSCORE', KEYS[1], member)
if not previous and redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') >= tonumber(ARGV[4]) then
  return {0, 0, 0}
end
local expiry = now + tonumber(ARGV[3])
local seq = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= seq then seq = tonumber(last[2]) + 1 end
redis.call('ZADD', KEYS[1], expiry, member)
redis.call('ZADD', KEYS[2], seq, member)
redis.call('HSET', KEYS[3], member, string.format('%0""" + _D + """d', expiry) .. ARGV[2])
-- the namespace's keys live as long as its longest registration, then Redis drops them by itself
local longest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], longest[2]) end
if previous then return {1, expiry, 1} end
return {1, expiry, 0}
"""

# KEYS: namespace expiries, sequence, records.  ARGV: cursor (a sequence number), limit.
# -> {now_ms, new cursor, more 0/1, record...}; each record still carries its expiry digits.
DISCOVER = _NOW + """
local limit = tonumber(ARGV[2])
local cursor = ARGV[1]
local out = {now, cursor, 0}
-- expired entries waiting for a purge are skipped; bound that work so one call stays short
local budget = limit * 4 + 100
while #out - 3 < limit and budget > 0 do
  local want = math.min(limit - (#out - 3), budget)
  local members = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. cursor, '+inf', 'LIMIT', 0, want)
  if #members == 0 then break end
  local records = redis.call('HMGET', KEYS[3], unpack(members))
  for i = 1, #records do
    local record = records[i]
    if record and tonumber(string.sub(record, 1, """ + _D + """)) > now then out[#out + 1] = record end
  end
  -- only the last member's score is needed: formatting every score costs more than the lookup
  cursor = redis.call('ZSCORE', KEYS[2], members[#members])
  budget = budget - #members
end
out[2] = cursor
out[3] = #redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. cursor, '+inf', 'LIMIT', 0, 1)
return out
"""

# KEYS: namespace expiries, sequence, records.  ARGV: member.  -> {now_ms, record or false}
LOOKUP = _NOW + """
local record = redis.call('HGET', KEYS[3], ARGV[1])
if record and tonumber(string.sub(record, 1, """ + _D + """)) > now then return {now, record} end
return {now, false}
"""

# KEYS: namespace expiries, sequence, records.  ARGV: member.  -> 1 if a live registration was removed
UNREGISTER = _NOW + """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if expiry and tonumber(expiry) > now then return 1 end
return 0
"""

ALL = {"rate": RATE, "admit": ADMIT, "register": REGISTER, "discover": DISCOVER, "lookup": LOOKUP,
       "unregister": UNREGISTER}
