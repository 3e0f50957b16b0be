"""The Lua scripts that make each shared decision atomic inside Redis.

Keys (all under `state.key_prefix`): `alive` (sorted set: replica -> expiry in ms, Redis's
clock), `slots:<node>|<model>` (hash: replica -> slots it holds there), `belief:<node>|<model>`
(hash: replica -> its own learned belief of the slots), `hand:<node>|<model>` (hash: waiter ->
expiry in ms for the slots a release handed to that waiter of another replica, counted in its
replica's slots, and not yet taken by one of that replica's requests), `wait:<model>` (sorted
set: waiter -> urgency, lower first; a waiter is `<replica>:<n>`) and `wexp:<model>` (sorted
set: waiter -> expiry in ms).
Slots of a replica whose `alive` entry has expired are dropped by the next grant, so a killed
replica's slots come back within `state.lease_ttl`; its waiters expire the same way.
"""

from __future__ import annotations

import hashlib

# A slot handed to a waiter is taken back after this if its replica has not taken it (it missed
# the event, or died): the replica takes or gives back its handed slots within
# `handed.RESERVE_S`, and tells Redis within `handed.TAKE_S`.
HAND_TTL_MS = 3000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The shared belief of a node's slots for a model, from the live replicas' own (`believed`, or
# `believed/upper` once waits bounded it: `others.Others._tell`): the highest belief, no higher
# than the lower median of their bounds (none: unbounded). One replica's proof raises it (proofs
# err low), one replica's waits do not lower it (they may be another's requests); the lower
# median of the beliefs stalled (README, "Replicas over Redis"). nil while none told one.
_BOUND = """
local function shared_belief(BELIEF, ALIVE)
  local highest = nil
  local uppers = {}
  local entries = redis.call('HGETALL', BELIEF)
  for i = 1, #entries, 2 do
    local alive = redis.call('ZSCORE', ALIVE, entries[i])
    if alive and tonumber(alive) >= now then
      local believed, upper = string.match(entries[i + 1], '^(%d+)/?(%d*)$')
      if believed then
        highest = math.max(highest or 0, tonumber(believed))
        uppers[#uppers + 1] = tonumber(upper) or math.huge
      end
    else
      redis.call('HDEL', BELIEF, entries[i])
    end
  end
  if not highest then return nil end
  table.sort(uppers)
  return math.min(highest, uppers[math.floor((#uppers + 1) / 2)])
end
local function bound(BELIEF, ALIVE, capacity, learn)
  if learn ~= '1' then return tonumber(capacity) end
  return (shared_belief(BELIEF, ALIVE) or tonumber(capacity)) + 1
end
"""

_HAND_OVER = (
    f"""
local HAND_TTL_MS = {HAND_TTL_MS}
"""
    + """
local function owner(id) return string.match(id, '^(.*):[^:]*$') end
-- A slot handed to a waiter whose replica never took it (it missed the event): back to the
-- pool. A replica that took it after all counts it anew (`TAKE`).
local function expire_hand(SLOTS, HAND)
  local entries = redis.call('HGETALL', HAND)
  for i = 1, #entries, 2 do
    if tonumber(entries[i + 1]) < now then
      redis.call('HDEL', HAND, entries[i])
      local r = owner(entries[i])
      if r and redis.call('HINCRBY', SLOTS, r, -1) <= 0 then redis.call('HDEL', SLOTS, r) end
    end
  end
end
-- Hands up to `free` slots of SLOTS to the most urgent waiters of WAIT (their replicas alive),
-- those with an urgency below `below` only, skipping the waiters of replica `skip` (nil: none):
-- each is counted as its replica's slot at once and noted in HAND (handed, not yet taken), and
-- the waiter leaves the order. A waiter of another replica than ME is told through the channel;
-- those of ME are returned. Dead replicas' waiters are left to their expiry. With `stop`, it
-- stops at the first waiter of that replica (more urgent than any left): returns true then;
-- unless that replica named its `parked` waiter (its refused request that goes before its local
-- queue): that one is handed the slot in its turn, and the replica's other waiters before it
-- (a registration still on its way out, or a local-queue request the replica orders after it)
-- are passed over.
local function hand_over(SLOTS, ALIVE, WAIT, WEXP, HAND, ME, channel, node, model, free, below,
    skip, stop, parked)
  local mine = {}
  local offset = 0
  local looked = 0
  while free > 0 and looked < 256 do
    local batch = redis.call('ZRANGEBYSCORE', WAIT, '-inf', below, 'LIMIT', offset, 16)
    if #batch == 0 then break end
    local kept = 0
    for _, id in ipairs(batch) do
      -- (all handed: the waiters after them, this replica's included, wait for the next)
      if free <= 0 then break end
      looked = looked + 1
      local r = owner(id)
      if stop and r == stop and not parked then return mine, true end
      -- (a waiter already handed a slot here is waiting to take it: not a second one)
      local alive = r and r ~= skip and (r ~= stop or id == parked)
        and redis.call('HEXISTS', HAND, id) == 0 and redis.call('ZSCORE', ALIVE, r)
      if alive and tonumber(alive) >= now then
        if id == parked then parked = nil end  -- its other waiters: left to its local queue
        redis.call('HINCRBY', SLOTS, r, 1)
        -- (ME's own waiter takes it in ME's process at once: a lease like any other, no entry)
        if r ~= ME then redis.call('HSET', HAND, id, now + HAND_TTL_MS) end
        redis.call('ZREM', WAIT, id)
        redis.call('ZREM', WEXP, id)
        free = free - 1
        -- With the slots all replicas hold there now and those handed to the other replicas'
        -- waiters and not taken (for the taker's proof of the slots that ran beside it).
        local held = 0
        for _, n in ipairs(redis.call('HVALS', SLOTS)) do held = held + tonumber(n) end
        local hand = 0
        for _, other in ipairs(redis.call('HKEYS', HAND)) do
          if owner(other) ~= r then hand = hand + 1 end
        end
        if r == ME then
          mine[#mine + 1] = id .. '|' .. held .. '|' .. hand
        else
          redis.call('PUBLISH', channel, cjson.encode({kind = 'handed', to = r, waiter = id,
            node = node, model = model, held = held, hand = hand}))
        end
      else
        kept = kept + 1
      end
    end
    offset = offset + kept
  end
  return mine, false
end
"""
)

# KEYS: alive, wait, wexp, then for each candidate node in the asker's order of preference its
# slots hash, hand and belief. ARGV: replica, waiter id, urgency, ttl ms, channel, model, then
# for each candidate its node, capacity, learn (1: the bound is the shared belief, or `capacity`
# (the asker's belief) while none is shared, plus one probe margin; else `capacity`, configured)
# and the asker's own belief when it changed (or ""). The first candidate with room grants: a
# request whose first choice is full takes a slot elsewhere in the same round trip. Free slots
# that more urgent waiters of other replicas are waiting for are handed to them first.
# Returns {verdict, k, left, pending, total_1, shared_1, ..., total_k, shared_k}: the slots all
# replicas hold on each candidate looked at, and the shared belief there ("" if none); `k` is
# the candidate granted (0: none), `left` the free slots left there, `pending` the slots there
# handed to other replicas' waiters and not taken yet. Verdicts: 1 granted, 2 granted from a
# slot handed to this waiter earlier (not yet taken by one of its replica's requests: that
# candidate alone is looked at), 0 refused on every candidate (the waiter is then registered),
# 3 the same while others wait too (a slot freed anywhere will be handed to the most urgent of
# them), -1 when this replica is unknown to Redis (restarted, or it was away past its lease).
GRANT = (
    _NOW
    + _BOUND
    + _HAND_OVER
    + """
local me, waiter, urgency = ARGV[1], ARGV[2], ARGV[3]
local ALIVE, WAIT, WEXP = KEYS[1], KEYS[2], KEYS[3]
local mine = redis.call('ZSCORE', ALIVE, me)
if not mine or tonumber(mine) < now then return {-1, 0} end
local count = (#KEYS - 3) / 3
for k = 1, count do  -- every candidate's belief, looked at or not, is told
  local told = ARGV[6 + 4 * k]
  if ARGV[5 + 4 * k] == '1' and told ~= '' then redis.call('HSET', KEYS[3 * k + 3], me, told) end
end
local stale = redis.call('ZRANGEBYSCORE', WEXP, '-inf', now, 'LIMIT', 0, 32)
for _, id in ipairs(stale) do
  redis.call('ZREM', WAIT, id)
  redis.call('ZREM', WEXP, id)
end
local first, last = 1, count
for k = 1, count do  -- a slot handed to this very waiter already: that one
  if redis.call('HEXISTS', KEYS[3 * k + 2], waiter) == 1 then first, last = k, k end
end
local heard = {}
for k = first, last do
  local SLOTS, HAND, BELIEF = KEYS[3 * k + 1], KEYS[3 * k + 2], KEYS[3 * k + 3]
  local node, learn = ARGV[3 + 4 * k], ARGV[5 + 4 * k]
  local capacity = bound(BELIEF, ALIVE, ARGV[4 + 4 * k], learn)
  local shared = ''
  if learn == '1' then shared = tostring(shared_belief(BELIEF, ALIVE) or '') end
  -- Expired hand-overs first: the slots they free count as free in the sum below.
  expire_hand(SLOTS, HAND)
  local total = 0
  local dead = false
  local held = redis.call('HGETALL', SLOTS)
  for i = 1, #held, 2 do
    local alive = redis.call('ZSCORE', ALIVE, held[i])
    if alive and tonumber(alive) >= now then
      total = total + tonumber(held[i + 1])
    else
      redis.call('HDEL', SLOTS, held[i])
      dead = true
    end
  end
  if dead then  -- the slots handed to a dead replica's waiters went with its slots
    for _, id in ipairs(redis.call('HKEYS', HAND)) do
      local alive = redis.call('ZSCORE', ALIVE, owner(id) or '')
      if not alive or tonumber(alive) < now then redis.call('HDEL', HAND, id) end
    end
  end
  -- Slots handed to other replicas' waiters and not taken yet: counted, but not running yet.
  local pending = 0
  for _, id in ipairs(redis.call('HKEYS', HAND)) do
    if owner(id) ~= me then pending = pending + 1 end
  end
  if redis.call('HDEL', HAND, waiter) == 1 then
    redis.call('ZREM', WAIT, waiter)
    redis.call('ZREM', WEXP, waiter)
    heard[#heard + 1] = total
    heard[#heard + 1] = shared
    return {2, k, 0, pending, unpack(heard)}
  end
  local free = capacity - total
  if free > 0 then
    -- Waiters of other replicas more urgent than this request get the free slots first (this
    -- replica's own waiters are ordered by its local queue, holds included).
    hand_over(SLOTS, ALIVE, WAIT, WEXP, HAND, me, ARGV[5], node, ARGV[6], free,
      '(' .. urgency, me)
    total = 0
    for _, n in ipairs(redis.call('HVALS', SLOTS)) do total = total + tonumber(n) end
  end
  if total < capacity then
    redis.call('HINCRBY', SLOTS, me, 1)
    redis.call('ZREM', WAIT, waiter)
    redis.call('ZREM', WEXP, waiter)
    heard[#heard + 1] = total + 1
    heard[#heard + 1] = shared
    return {1, k, capacity - total - 1, pending, unpack(heard)}
  end
  heard[#heard + 1] = total
  heard[#heard + 1] = shared
end
redis.call('ZADD', WAIT, urgency, waiter)
redis.call('ZADD', WEXP, now + tonumber(ARGV[4]), waiter)
if redis.call('ZCARD', WAIT) > 1 then return {3, 0, 0, 0, unpack(heard)} end
return {0, 0, 0, 0, unpack(heard)}
"""
)

# KEYS: slots hash, alive, wait, wexp, hand, belief. ARGV: replica, channel, node, model,
# capacity, reserve (a waiter: the slot given back is one handed to it and never taken, else ""),
# learn (as for GRANT), parked (the releaser's most urgent refused request, when it goes before
# its local queue, else ""), belief (the releaser's own, as for GRANT: a request that ended is
# when beliefs change, and a request handed its slot sends no grant to carry it). The freed slot goes at once to the most urgent waiter of any
# replica (no waiter races for it). The releaser's own: its `parked` waiter is handed it like any
# other (returned: the replica wakes that request, which takes it with no round trip; before, it
# asked with a grant, refused two times in three in overload, as other replicas' grants came
# first); any other of its waiters stops the hand-over and the slot stays free for the releaser,
# whose local queue orders its requests (holds, model affinity; its next request asks for it at
# once). Returns {1 or 2, held, shared, waiter|held|hand, ...}: 2 when a slot was left free for
# the releaser's own waiters; the slots all replicas hold there after it and their shared belief
# ("" if none: as a grant tells them), then the slots handed to the releaser's own waiters; or
# {0} (a reserve that its waiter's grant took).
# Handing the slot to any own waiter (kept as the replica's lease, taken by its next request)
# was measured worse: the local queue's order is not Redis's, so the replica's next request was
# refused the slot handed to another of its waiters, and letting any of its grants take it made
# some slots taken twice (over the bound). A learned bound's release of a request that
# ran is told to the other replicas ('ended'): their proofs count the slots held at their
# grants, less those that ended before their requests took a slot (fleet/beliefs.py).
RELEASE = (
    _NOW
    + _BOUND
    + _HAND_OVER
    + """
local me = ARGV[1]
if ARGV[6] ~= '' and redis.call('HDEL', KEYS[5], ARGV[6]) == 0 then return {0} end
local left = redis.call('HINCRBY', KEYS[1], me, -1)
if left <= 0 then redis.call('HDEL', KEYS[1], me) end
if ARGV[7] == '1' and ARGV[9] ~= '' then redis.call('HSET', KEYS[6], me, ARGV[9]) end
if ARGV[6] == '' and ARGV[7] == '1' then
  -- A request ended there: the others no longer count it as running beside theirs.
  redis.call('PUBLISH', ARGV[2], cjson.encode({kind = 'ended', by = me, node = ARGV[3],
    model = ARGV[4]}))
end
expire_hand(KEYS[1], KEYS[5])
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 32)
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
local shared = ''
if ARGV[7] == '1' then shared = tostring(shared_belief(KEYS[6], KEYS[2]) or '') end
local function held()
  local total = 0
  for _, n in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(n) end
  return total
end
if redis.call('ZCARD', KEYS[3]) == 0 then return {1, held(), shared} end
local free = bound(KEYS[6], KEYS[2], ARGV[5], ARGV[7]) - held()
if free <= 0 then return {1, held(), shared} end
local parked = ARGV[8]
if parked == '' or not redis.call('ZSCORE', KEYS[3], parked) then parked = nil end
local given, own = hand_over(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], me, ARGV[2],
  ARGV[3], ARGV[4], free, '+inf', nil, me, parked)
if own then return {2, held(), shared, unpack(given)} end
return {1, held(), shared, unpack(given)}
"""
)

# KEYS: hand, slots. ARGV: replica, waiter. A request of this replica took the slot handed to
# that waiter without asking (`Leases.take`): 1. If the waiter's grant had taken it meanwhile,
# the request's lease is counted anew: 0.
TAKE = """
if redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then return 1 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 0
"""

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

# KEYS: wexp, wait. ARGV: ttl ms, waiter ids. Waiters still waiting keep their place. Returns
# those not among the waiters (handed a slot since, or a slot handed to them went to another
# request of their replica): a parked one asks again rather than wait for nothing.
KEEP_WAITERS = (
    _NOW
    + """
local missing = {}
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then missing[#missing + 1] = ARGV[i] end
end
return missing
"""
)

SCRIPTS = {
    "grant": GRANT,
    "release": RELEASE,
    "take": TAKE,
    "enqueue": ENQUEUE,
    "renew": RENEW,
    "keep_waiters": KEEP_WAITERS,
}
SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}
