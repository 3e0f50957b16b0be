"""The Lua scripts of redis_jobs.py: each change to a shared job is one step in Redis, so that
replicas never see half of it (a job without its documents, a result without its count)."""

RESERVE = """
local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
if stored + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, stored} end
redis.call('INCRBY', KEYS[1], ARGV[1])
return {1, stored}
"""
# KEYS: job, open, over; ARGV: status, at, error ('' for none), id
SET_STATUS = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or current == 'done' or current == 'failed' or current == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
if ARGV[1] == 'running' then
  redis.call('HSETNX', KEYS[1], 'started', ARGV[2])
else
  redis.call('HSETNX', KEYS[1], 'finished', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'finished'), ARGV[4])
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
return 1
"""
# KEYS: job, out, settled, errs; ARGV: vectors count, then index/value pairs (vectors first)
STORE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local vectors, done, failed = tonumber(ARGV[1]), 0, 0
for k = 2, #ARGV, 2 do
  local index, value = ARGV[k], ARGV[k + 1]
  local tag = (k - 2) / 2 < vectors and 'v' or 'e'
  if redis.call('HSETNX', KEYS[2], index, tag .. value) == 1 then
    redis.call('SETBIT', KEYS[3], index, 1)
    if tag == 'v' then done = done + 1 else
      failed = failed + 1
      redis.call('ZINCRBY', KEYS[4], 1, value)
    end
  end
end
redis.call('HINCRBY', KEYS[1], 'done', done)
redis.call('HINCRBY', KEYS[1], 'failed', failed)
return {done, failed}
"""
# KEYS: job, stored, all, open, over, then the job's other keys; ARGV: id
DELETE = """
local total = redis.call('HGET', KEYS[1], 'total')
if not total then return 0 end
redis.call('DECRBY', KEYS[2], total)
for k = 3, 5 do redis.call('ZREM', KEYS[k], ARGV[1]) end
redis.call('DEL', KEYS[1], unpack(KEYS, 6))
return 1
"""
# KEYS: lease; ARGV: token, ttl ms
TAKE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
KEEP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
