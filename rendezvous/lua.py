"""The Lua scripts run inside Redis: each is one atomic step, with Redis's own clock.

Times come from `TIME` inside the script, so every replica agrees on what has expired and an expired
registration is never returned, whatever the replicas' clocks say. Stored records begin with their expiry
in EXPIRY_DIGITS digits, then their source and a space (rendezvous/record.py owns that format; the width
and the separator are handed in from there).

Each step of a registration is written once, as a Lua function, and the scripts are made of them:
- on a single node, REGISTER does the whole registration in one script and one round trip: count the
  request against its source, admit the peer (its rate, the nonce, its per-peer cap), check the source's
  quota, write the namespace, and only then take the places in the peer's index and the source's quota,
  so a refusal leaves nothing to undo;
- on a Redis Cluster a script runs on one slot, and the source's (`{ip:}`), the peer's (`{p:}`) and the
  namespace's (`{ns:}`) keys are on three: RATE, then HOLD + ADMIT (two slots, one round trip), then WRITE,
  whose outcome the caller undoes the reservations of when it refuses (store.py).
"""
from rendezvous.record import EXPIRY_DIGITS, SOURCE_END

_D = str(EXPIRY_DIGITS)

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# count(key, window_ms) -> the count in this window, ms until it resets
_COUNT = """
local function count(key, window)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, window) end
  return n, redis.call('PTTL', key)
end
"""

# A sorted set of places that lapse (a peer's namespaces, a source's held registrations): members scored by
# their expiry, the key kept as long as its latest.
_PLACES = """
local function live_places(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end
local function take_place(key, until_ms, place)
  redis.call('ZADD', key, until_ms, place)
  local latest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, latest[2])
end
"""

# admit(peer rate key, nonce key, index bucket, rate limit, window_ms, nonce_ttl_ms, member, namespace or '',
#       cap) -> 'rate', ms until the window resets | 'replay' | 'peer_cap' | 'ok', whether the namespace is new
#       to the peer's index. Nothing is taken in the index yet. An index entry is the peer's member (a fixed
#       width, record.MEMBER_BYTES) then the namespace; its bucket holds other peers' entries too.
_ADMIT = """
local function admit(rate_key, nonce_key, index_key, limit, window, nonce_ttl, member, namespace, cap)
  local n, reset = count(rate_key, window)
  if n > tonumber(limit) then return 'rate', reset end
  if not redis.call('SET', nonce_key, '1', 'NX', 'PX', nonce_ttl) then return 'replay', 0 end
  if namespace == '' then return 'ok', 0 end
  live_places(index_key)
  if redis.call('ZSCORE', index_key, member .. namespace) then return 'ok', 0 end
  local held = 0
  for _, entry in ipairs(redis.call('ZRANGE', index_key, 0, -1)) do
    if string.sub(entry, 1, #member) == member then held = held + 1 end
  end
  if held >= tonumber(cap) then return 'peer_cap', 0 end
  return 'ok', 1
end
"""

# may_hold(quota key, entry, cap) -> 1 the source holds this registration already, 2 it may take a new
# place, 0 it holds its cap
_HOLD = """
local function may_hold(key, entry, cap)
  local held = live_places(key)
  if redis.call('ZSCORE', key, entry) then return 1 end
  if held >= tonumber(cap) then return 0 end
  return 2
end
"""

# Every namespace step works on the namespace's keys (keys.py NamespaceKeys.all), as the table NS:
#   NS[1] expiries, NS[2] sequence, NS[3] records, NS[4] sources, NS[5] the event stream (present while the
#   namespace is watched); a source's own set of members is NS[1] less its 'exp' suffix, plus 'by:' and the
#   source (same slot).
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
local watched = redis.call('EXISTS', NS[5]) == 1
"""


def _emit(kind: str, stored: str) -> str:
    """Lua writing one event (no function of its own: a closure per call is garbage Redis counts as memory)."""
    return f"""redis.call('XADD', NS[5], 'MINID', '~', now - events_window, '*', 'e', {kind}, 'r', {stored})
  redis.call('XTRIM', NS[5], 'MAXLEN', '~', events_maxlen)"""


# -> until_ms, the keys' new expiry
_KEEP = """
local longest = redis.call('ZRANGE', NS[1], -1, -1, 'WITHSCORES')[2]
local until_ms = math.max(tonumber(longest or now), now)
if watched then until_ms = until_ms + events_window end
for i = 1, 4 do redis.call('PEXPIREAT', NS[i], until_ms) end
"""

_SOURCES = """
local by_prefix = string.sub(NS[1], 1, #NS[1] - 3) .. 'by:'
local function source_of(stored)
  return string.sub(stored, """ + str(EXPIRY_DIGITS + 1) + """, string.find(stored, '""" + SOURCE_END.decode() + \
    """', """ + str(EXPIRY_DIGITS + 1) + """, true) - 1)
end
-- remove a member and its source's count of it, telling watchers why (`kind`, or nothing when the member
-- is written again in the same step); -> its source (its quota entry is the caller's to drop), or ''
local function forget(member, kind)
  local stored = redis.call('HGET', NS[3], member)
  redis.call('ZREM', NS[1], member)
  redis.call('ZREM', NS[2], member)
  if not stored then return '' end
  redis.call('HDEL', NS[3], member)
  local source = source_of(stored)
  redis.call('ZREM', by_prefix .. source, member)
  if tonumber(redis.call('ZINCRBY', NS[4], -1, source)) <= 0 then redis.call('ZREM', NS[4], source) end
  if kind and watched then
    """ + _emit("kind", "stored") + """
  end
  return source
end
"""


# put(member, source, peer object fragment, ttl_ms, max peers): first purges up to 100 expired registrations
# -> {1, expiry_ms, replaced 0/1, released} or {0, 0, 0, {}} when the namespace is full; `released` lists
#    (source, member) pairs whose quota entries the caller drops: a registration evicted to make room, or
#    this peer's own registration taken over from another source.
# A full namespace is shared fairly, not first come first served: a source holding fewer registrations
# than the largest holder less one takes the place of that holder's oldest registration.
_PUT = _EVENTS + _SOURCES + """
local function put(member, source, body, ttl, max_peers)
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', NS[1], '-inf', now, 'LIMIT', 0, 100)) do
    forget(dead, 'expire')
  end
  local previous = redis.call('ZSCORE', NS[1], member)
  local released = {}
  if not previous and redis.call('ZCOUNT', NS[1], '(' .. now, '+inf') >= max_peers then
    local mine = tonumber(redis.call('ZSCORE', NS[4], source) or '0')
    local top = redis.call('ZREVRANGE', NS[4], 0, 0, 'WITHSCORES')
    if not top[1] or tonumber(top[2]) <= mine + 1 then return {0, 0, 0, {}} end
    local victim = redis.call('ZRANGE', by_prefix .. top[1], 0, 0)[1]
    if not victim then return {0, 0, 0, {}} end
    released = {forget(victim, 'leave'), victim}
  end
  local expiry = now + ttl
  local seq = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local last = redis.call('ZRANGE', NS[2], -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) >= seq then seq = tonumber(last[2]) + 1 end
  local old = redis.call('HGET', NS[3], member)
  local held_by = old and source_of(old)
  if held_by ~= source then
    if held_by then
      forget(member)
      released[#released + 1] = held_by
      released[#released + 1] = member
    end
    redis.call('ZINCRBY', NS[4], 1, source)
  end
  local stored = string.format('%0""" + _D + """d', expiry) .. source .. '""" + SOURCE_END.decode() + """' .. body
  redis.call('ZADD', NS[1], expiry, member)
  redis.call('ZADD', NS[2], seq, member)
  redis.call('ZADD', by_prefix .. source, seq, member)
  redis.call('HSET', NS[3], member, stored)
  if watched then
    """ + _emit("previous and 'renew' or 'join'", "stored") + """
  end
""" + _KEEP + """
  redis.call('PEXPIREAT', by_prefix .. source, until_ms)
  if previous then return {1, expiry, 1, released} end
  return {1, expiry, 0, released}
end
"""

# --- a whole registration on a single node -----------------------------------------------------------------

# KEYS: source's rate counter, source's held registrations, peer's rate counter, nonce key, peer's bucket of
#   the namespace index, the namespace's five, the live-namespaces index.
# ARGV: source's rate limit, window_ms, held entry (namespace NUL member), ttl_ms, the source's cap, peer's
#   rate limit, nonce_ttl_ms, namespace, max registrations per peer, member, peer object fragment, max peers
#   per namespace, source, events bounds.
# -> {'ip_rate', ms until the window resets}, {'rate', ms}, {'replay'}, {'peer_cap'}, {'quota'} (the source
#    holds its cap), {'full'} (the namespace is full), or {'ok', expiry_ms, replaced 0/1, released} (put).
# Checked in the order the Cluster's steps answer in (store.py), so both refuse the same way.
REGISTER = """
local NS = {KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]}
""" + _NOW + _COUNT + _PLACES + _ADMIT + _HOLD + _PUT + """
local n, reset = count(KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then return {'ip_rate', reset} end
local status, detail = admit(KEYS[3], KEYS[4], KEYS[5], ARGV[6], ARGV[2], ARGV[7], ARGV[10], ARGV[8], ARGV[9])
if status ~= 'ok' then return {status, detail} end
local hold = may_hold(KEYS[2], ARGV[3], ARGV[5])
if hold == 0 then return {'quota', 0} end
local done = put(ARGV[10], ARGV[13], ARGV[11], tonumber(ARGV[4]), tonumber(ARGV[12]))
if done[1] == 0 then return {'full', 0} end
take_place(KEYS[5], done[2], ARGV[10] .. ARGV[8])
take_place(KEYS[2], done[2], ARGV[3])
redis.call('ZADD', KEYS[11], 'GT', done[2], ARGV[8])
return {'ok', done[2], done[3], done[4]}
"""

# --- the same steps on a Redis Cluster, one slot each ------------------------------------------------------

# KEYS: counter.  ARGV: window_ms.  -> {count, ms until the window resets}
RATE = _COUNT + """
return {count(KEYS[1], ARGV[1])}
"""

# KEYS: the source's held registrations.  ARGV: entry (namespace NUL member), ttl_ms, cap.
# -> 2 a place newly reserved (the caller drops it if the registration is refused), 1 already held (its
#    expiry is extended when the registration is written), 0 refused: the source holds its cap.
HOLD = _NOW + _PLACES + _HOLD + """
local hold = may_hold(KEYS[1], ARGV[1], ARGV[3])
if hold == 2 then take_place(KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) end
return hold
"""

# KEYS: peer rate counter, nonce key, the peer's bucket of the namespace index.
# ARGV: rate limit, window_ms, nonce_ttl_ms, namespace ('' for none), ttl_ms, max registrations per peer, member.
# -> {status, detail}: 'rate' (detail = retry ms), 'replay', 'peer_cap', or 'ok' (detail 1 if the namespace
#    is new to the peer's index, so a later refusal can undo exactly that).
ADMIT = _NOW + _COUNT + _PLACES + _ADMIT + """
local status, detail = admit(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[7], ARGV[4], ARGV[6])
if status == 'ok' and ARGV[4] ~= '' then take_place(KEYS[3], now + tonumber(ARGV[5]), ARGV[7] .. ARGV[4]) end
return {status, detail}
"""

# KEYS: the namespace's.  ARGV: member, peer object fragment, ttl_ms, max peers, source, events bounds.
# -> put's reply.
WRITE = "local NS = KEYS\n" + _NOW + _PUT + """
return put(ARGV[1], ARGV[5], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
"""

# --- reads and the other namespace steps -------------------------------------------------------------------

# KEYS: the namespace's.  ARGV: cursor (a sequence number), limit.
# -> {now_ms, new cursor, more 0/1, record...}; each record still carries its expiry digits and source.
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
UNREGISTER = "local NS = KEYS\n" + _NOW + _EVENTS + _SOURCES + """
local expiry = redis.call('ZSCORE', NS[1], ARGV[1])
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
SWEEP = "local NS = KEYS\n" + _NOW + _EVENTS + _SOURCES + """
if not watched then
  watched = true
  """ + _emit("'start'", "''") + """
end
redis.call('PEXPIREAT', NS[5], now + events_window)
local dead = redis.call('ZRANGEBYSCORE', NS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(dead) do forget(member, 'expire') end
""" + _KEEP + """
local first = redis.call('XRANGE', NS[5], '-', '+', 'COUNT', 1)[1][1]
local last = redis.call('XREVRANGE', NS[5], '+', '-', 'COUNT', 1)[1][1]
local info = redis.call('XINFO', 'STREAM', NS[5])
local deleted = '0-0'
for i = 1, #info, 2 do if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end end
return {#dead, first, last, deleted}
"""

# KEYS: the source's open watch streams.  ARGV: lease ms, cap, then watcher IDs: with a cap, take a place for
# the one ID given; with cap 0, renew the leases of the IDs given that still hold one (a replica's heartbeat).
# -> 1 admitted (or renewed), 0 refused: the source holds its cap of watch streams on all replicas together.
# A lease, not a count: a replica that dies without closing its streams frees their places when they lapse.
WATCHER = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local expires, cap = now + tonumber(ARGV[1]), tonumber(ARGV[2])
if cap > 0 then
  if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= cap then
    return 0
  end
  redis.call('ZADD', KEYS[1], expires, ARGV[3])
else
  for i = 3, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expires, ARGV[i]) end
end
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if latest[2] then redis.call('PEXPIREAT', KEYS[1], latest[2]) end
return 1
"""

ALL = {"register": REGISTER, "rate": RATE, "hold": HOLD, "admit": ADMIT, "write": WRITE, "discover": DISCOVER,
       "lookup": LOOKUP, "unregister": UNREGISTER, "sweep": SWEEP, "watcher": WATCHER}
# loaded at start; the watchers' scripts load at their first use (a NOSCRIPT reply sends their text), so a
# replica nobody watches keeps no more of them in Redis's memory than before watching existed. A single node
# runs REGISTER, a Cluster HOLD + ADMIT + WRITE: a script neither loads is sent with its text the first time.
AT_START = ("register", "rate", "hold", "admit", "write", "discover", "lookup", "unregister")
