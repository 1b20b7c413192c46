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

# Every namespace script declares the namespace's keys (keys.py NamespaceKeys.all):
#   KEYS[1] expiries, KEYS[2] sequence, KEYS[3] records, KEYS[4] sources, KEYS[5] source of each member,
#   KEYS[6] the event stream (present while the namespace is watched);
# a source's own set of members is KEYS[1] less its 'exp' suffix, plus 'by:' and the source (same slot).
# The scripts that change the namespace take two last ARGV: the stream's length bound and its time window
# (ms). Each change is written to the stream in the same step, so no reader can see one without the other.
# The stream exists only while the namespace is watched: every replica watching sweeps it about twice a second
# (SWEEP), which makes the stream and keeps it WATCH_RESUME_SECONDS past that sweep. A change is written to
# it only while it exists, so nobody pays for events nobody reads, and a stream that exists holds every
# change since its first entry: a watcher whose position it lacks resyncs, and none is resumed past a gap.
# An event: e = join, renew, leave, expire (or start: the first entry, a position for a new watcher), r = the
# stored record (its last state, for leave and expire). _KEEP: the namespace's keys live as long as its
# longest registration, then Redis drops them by itself; while the stream exists they outlive it, so the
# expiries it has not told of yet are still there for a sweep to find.
# (Comments stay out of the scripts' text: Redis keeps that text, and its compiled form, in its memory; and
# each extra call costs the unwatched hot path, so the check is the one EXISTS.)
_EVENTS = """
local events_maxlen, events_window = tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])
local watched = redis.call('EXISTS', KEYS[6]) == 1
"""


def _emit(kind: str, stored: str) -> str:
    """Lua writing one event (no function of its own: a closure per call is garbage Redis counts as memory)."""
    return f"""redis.call('XADD', KEYS[6], 'MINID', '~', now - events_window, '*', 'e', {kind}, 'r', {stored})
  redis.call('XTRIM', KEYS[6], 'MAXLEN', '~', events_maxlen)"""


# -> until_ms, the keys' new expiry
_KEEP = """
local longest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
local until_ms = math.max(tonumber(longest or now), now)
if watched then until_ms = until_ms + events_window end
for i = 1, 5 do redis.call('PEXPIREAT', KEYS[i], until_ms) end
"""

_SOURCES = """
local by_prefix = string.sub(KEYS[1], 1, #KEYS[1] - 3) .. 'by:'
-- remove a member and its source's count of it, telling watchers why (`kind`, or nothing when the member
-- is written again in the same step); -> the source (its quota entry is the caller's to drop)
local function forget(member, kind)
  local stored = redis.call('HGET', KEYS[3], member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
  local source = redis.call('HGET', KEYS[5], member)
  if source then
    redis.call('HDEL', KEYS[5], member)
    redis.call('ZREM', by_prefix .. source, member)
    if tonumber(redis.call('ZINCRBY', KEYS[4], -1, source)) <= 0 then redis.call('ZREM', KEYS[4], source) end
  end
  if kind and stored and watched then
    """ + _emit("kind", "stored") + """
  end
  return source or ''
end
"""

_PURGE_EXPIRED = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
for _, member in ipairs(dead) do forget(member, 'expire') end
"""

# KEYS: the namespace's (above).  ARGV: member, peer object fragment, ttl_ms, max peers, source, events bounds.
# -> {1, expiry_ms, replaced 0/1, released} or {0, 0, 0, {}} when the namespace is full; `released` lists
#    (source, member) pairs whose quota entries the caller drops: a registration evicted to make room, or
#    this peer's own registration taken over from another source.
# A full namespace is shared fairly, not first come first served: a source holding fewer registrations
# than the largest holder less one takes the place of that holder's oldest registration.
REGISTER = _NOW + _EVENTS + _SOURCES + _PURGE_EXPIRED + """
local member, source = ARGV[1], ARGV[5]
local previous = redis.call('ZSCORE', KEYS[1], member)
local released = {}
if not previous and redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') >= tonumber(ARGV[4]) then
  local mine = tonumber(redis.call('ZSCORE', KEYS[4], source) or '0')
  local top = redis.call('ZREVRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if not top[1] or tonumber(top[2]) <= mine + 1 then return {0, 0, 0, {}} end
  local victim = redis.call('ZRANGE', by_prefix .. top[1], 0, 0)[1]
  if not victim then return {0, 0, 0, {}} end
  released = {forget(victim, 'leave'), victim}
end
local expiry = now + tonumber(ARGV[3])
local seq = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= seq then seq = tonumber(last[2]) + 1 end
local held_by = redis.call('HGET', KEYS[5], member)
if held_by ~= source then
  if held_by then
    forget(member)
    released[#released + 1] = held_by
    released[#released + 1] = member
  end
  redis.call('HSET', KEYS[5], member, source)
  redis.call('ZINCRBY', KEYS[4], 1, source)
end
local stored = string.format('%0""" + _D + """d', expiry) .. ARGV[2]
redis.call('ZADD', KEYS[1], expiry, member)
redis.call('ZADD', KEYS[2], seq, member)
redis.call('ZADD', by_prefix .. source, seq, member)
redis.call('HSET', KEYS[3], member, stored)
if watched then
  """ + _emit("previous and 'renew' or 'join'", "stored") + """
end
""" + _KEEP + """
redis.call('PEXPIREAT', by_prefix .. source, until_ms)
if previous then return {1, expiry, 1, released} end
return {1, expiry, 0, released}
"""

# KEYS: the source's held registrations.  ARGV: entry (namespace NUL member), ttl_ms, cap.
# -> 2 a place newly reserved (the caller drops it if the registration is refused), 1 already held (its
#    expiry is extended when the registration is written), 0 refused: the source holds its cap.
HOLD = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], latest[2])
return 2
"""

# KEYS: the namespace's.  ARGV: cursor (a sequence number), limit.
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

# KEYS: the namespace's.  ARGV: member.  -> {now_ms, record or false}
LOOKUP = _NOW + """
local record = redis.call('HGET', KEYS[3], ARGV[1])
if record and tonumber(string.sub(record, 1, """ + _D + """)) > now then return {now, record} end
return {now, false}
"""

# KEYS: the namespace's.  ARGV: member, events bounds.
# -> {1 if a live registration was removed, the source that held it}. A registration that ran out but was not
# purged yet has expired, not left: it is told once, as expire.
UNREGISTER = _NOW + _EVENTS + _SOURCES + """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
local live = expiry and tonumber(expiry) > now
local source = forget(ARGV[1], live and 'leave' or 'expire')
""" + _KEEP + """
if live then return {1, source} end
return {0, source}
"""

# KEYS: the namespace's.  ARGV: most expiries to tell of, events bounds.
# Run by every replica watching the namespace, about twice a second: expired registrations are removed and
# told of as `expire` in the same atomic step, so each is told exactly once whichever replica gets there first.
# -> {expired count, the stream's first entry ID, its last, the last it trimmed}
SWEEP = _NOW + _EVENTS + _SOURCES + """
if not watched then
  watched = true
  """ + _emit("'start'", "''") + """
end
redis.call('PEXPIREAT', KEYS[6], now + events_window)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(dead) do forget(member, 'expire') end
""" + _KEEP + """
local first = redis.call('XRANGE', KEYS[6], '-', '+', 'COUNT', 1)[1][1]
local last = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)[1][1]
local info = redis.call('XINFO', 'STREAM', KEYS[6])
local deleted = '0-0'
for i = 1, #info, 2 do if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end end
return {#dead, first, last, deleted}
"""

# KEYS: the source's open watch streams.  ARGV: watcher ID, lease ms, cap (0: renew the lease only).
# -> 1 admitted (or renewed), 0 refused: the source holds its cap of watch streams on all replicas together.
# A lease, not a count: a replica that dies without closing its streams frees their places when they lapse.
WATCHER = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[3])
if cap > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
if cap > 0 or redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if latest[2] then redis.call('PEXPIREAT', KEYS[1], latest[2]) end
return 1
"""

ALL = {"rate": RATE, "hold": HOLD, "admit": ADMIT, "register": REGISTER, "discover": DISCOVER, "lookup": LOOKUP,
       "unregister": UNREGISTER, "sweep": SWEEP, "watcher": WATCHER}
# loaded at start; the watchers' scripts load at their first use (a NOSCRIPT reply sends their text), so a
# replica nobody watches keeps no more of them in Redis's memory than before watching existed
AT_START = ("rate", "hold", "admit", "register", "discover", "lookup", "unregister")
