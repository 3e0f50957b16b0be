"""The Lua scripts that make each shared decision atomic inside Redis.

Keys (all under `state.key_prefix`): `alive` (sorted set: replica -> expiry in ms, Redis's
clock), `slots:<node>|<model>` (hash: replica -> slots it holds there), `wait:<model>` (sorted
set: waiter -> urgency, lower first) and `wexp:<model>` (sorted set: waiter -> expiry in ms).
Slots of a replica whose `alive` entry has expired are dropped by the next grant, so a killed
replica's slots come back within `state.lease_ttl`; its waiters expire the same way.
"""

from __future__ import annotations

import hashlib

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: slots hash, alive, wait, wexp. ARGV: replica, capacity, waiter id, urgency, ttl ms.
# Returns {1, total} granted, {0, total, other replicas' waiters ahead (counted up to the free
# slots)} refused (the waiter is then registered), or {-1, 0}
# when this replica is unknown to Redis (restarted, or the replica was away past its lease).
GRANT = (
    _NOW
    + """
local me = ARGV[1]
local mine = redis.call('ZSCORE', KEYS[2], me)
if not mine or tonumber(mine) < now then return {-1, 0} end
local total = 0
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local alive = redis.call('ZSCORE', KEYS[2], held[i])
  if alive and tonumber(alive) >= now then
    total = total + tonumber(held[i + 1])
  else
    redis.call('HDEL', KEYS[1], held[i])
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 32)
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
-- Waiters of other replicas more urgent than this request, counted only as far as the free
-- slots go (this replica's own waiters are ordered by its local queue, holds included).
local free = tonumber(ARGV[2]) - total
local ahead = 0
local offset = 0
local own = ARGV[1] .. ':'
while ahead < free and offset < 1024 do
  local batch = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[4], 'LIMIT', offset, 64)
  if #batch == 0 then break end
  for _, id in ipairs(batch) do
    if string.sub(id, 1, #own) ~= own then ahead = ahead + 1 end
  end
  offset = offset + #batch
end
if ahead < free then
  redis.call('HINCRBY', KEYS[1], me, 1)
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
  return {1, total + 1}
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[3])
return {0, total, ahead}
"""
)

# KEYS: slots hash, wait, wexp. ARGV: replica, channel, node, model. A release is announced only
# while someone (alive) waits for the model.
RELEASE = (
    _NOW
    + """
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 32)
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
if redis.call('ZCARD', KEYS[2]) > 0 then
  local total = 0
  local held = redis.call('HVALS', KEYS[1])
  for _, n in ipairs(held) do total = total + tonumber(n) end
  redis.call('PUBLISH', ARGV[2], cjson.encode({kind = 'freed', node = ARGV[3],
    model = ARGV[4], total = total}))
end
return left
"""
)

# KEYS: wait, wexp. ARGV: waiter id, urgency, ttl ms. A request about to wait takes its place.
ENQUEUE = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: alive. ARGV: replica, ttl ms. Returns 0 when the replica was not known (its slots
# must be written again), 1 otherwise. Replicas dead for a minute leave the set.
RENEW = (
    _NOW
    + """
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if not seen or tonumber(seen) < now then return 0 end
return 1
"""
)

# KEYS: wexp. ARGV: ttl ms, waiter ids. Waiters still waiting keep their place.
KEEP_WAITERS = (
    _NOW
    + """
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
return 1
"""
)

SCRIPTS = {
    "grant": GRANT,
    "release": RELEASE,
    "enqueue": ENQUEUE,
    "renew": RENEW,
    "keep_waiters": KEEP_WAITERS,
}
SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}
