/**
 * The Lua scripts of the Redis limiter. Every script takes the two keys of one
 * host, `KEYS[1]` = `<prefix>:{<host>}:n` (hash: worker id -> open
 * connections) and `KEYS[2]` = `<prefix>:{<host>}:w` (sorted set: worker id ->
 * lease deadline in ms), so that in Redis Cluster both live in one slot. Time
 * comes from Redis `TIME`, never from a worker's clock. No script looks at any
 * key but these two, so their cost does not depend on the size of the
 * database.
 *
 * @module
 */

/** The current Redis time in milliseconds, as Lua local `now`. */
const NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/** Sums the workers' fields into Lua local `sum`. */
const SUM = `
local sum = 0
local values = redis.call('HVALS', KEYS[1])
for i = 1, #values do
  local v = tonumber(values[i])
  if v and v > 0 then sum = sum + v end
end
`;

/**
 * Drops the workers whose lease has passed (their field and their member) and
 * leaves the sum of the remaining fields in Lua local `sum`.
 */
const PRUNE_AND_SUM = `
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
for i = 1, #expired do
  redis.call('HDEL', KEYS[1], expired[i])
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
end
` + SUM;

/**
 * `acquire(worker, limit, leaseMs, floor, ttlMs)`: takes one slot for
 * `worker` unless `limit > 0` and the live workers already hold `limit`.
 * `floor` is the number of slots the worker knows it holds: a field below it
 * (lost after a Redis restart) is raised to it first. Returns
 * `{granted (0|1), total}`.
 */
export const ACQUIRE_LUA: string = NOW + PRUNE_AND_SUM + `
local worker = ARGV[1]
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local floor = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local mine = tonumber(redis.call('HGET', KEYS[1], worker) or '0') or 0
if mine < 0 then mine = 0 end
local healed = false
if mine < floor then
  sum = sum + floor - mine
  mine = floor
  healed = true
end
if limit > 0 and sum >= limit then
  if healed then
    redis.call('HSET', KEYS[1], worker, mine)
    redis.call('ZADD', KEYS[2], now + lease, worker)
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  return {0, sum}
end
redis.call('HSET', KEYS[1], worker, mine + 1)
redis.call('ZADD', KEYS[2], now + lease, worker)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {1, sum + 1}
`;

/**
 * `release(worker)`: gives back one slot of `worker`; at 0 (or below, when the
 * field was already gone) its field and member are deleted. Returns the
 * worker's remaining count.
 */
export const RELEASE_LUA: string = `
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if v <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
return v
`;

/**
 * `sync(worker, count, leaseMs, ttlMs)`: sets `worker`'s field to `count`, its
 * own truth, and renews its lease; a count of 0 deletes its field and member.
 * Returns `count`.
 */
export const SYNC_LUA: string = NOW + `
local worker = ARGV[1]
local count = tonumber(ARGV[2])
if count <= 0 then
  redis.call('HDEL', KEYS[1], worker)
  redis.call('ZREM', KEYS[2], worker)
  return 0
end
local lease = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], worker, count)
redis.call('ZADD', KEYS[2], now + lease, worker)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return count
`;

/**
 * `count()`: the slots held by live workers (expired leases ignored, nothing
 * written). Returns the sum.
 */
export const COUNT_LUA: string = NOW + SUM + `
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
for i = 1, #expired do
  local v = tonumber(redis.call('HGET', KEYS[1], expired[i]) or '0')
  if v and v > 0 then sum = sum - v end
end
return sum
`;
