/**
 * The Lua scripts of the Redis limiter. The scripts of one host take its keys:
 * `KEYS[1]` = `<prefix>:{<host>}:n` (hash: worker id -> open connections),
 * `KEYS[2]` = `<prefix>:{<host>}:w` (sorted set: worker id -> lease deadline
 * in ms) and, for the scripts that write, `KEYS[3]` = the epoch key of the
 * host's slot (a string: a random token set once). In Redis Cluster all three
 * live in one slot. Time comes from Redis `TIME`, never from a worker's clock.
 * No script looks at any other key, so their cost does not depend on the size
 * of the database.
 *
 * A worker's count is live only while its lease deadline lies between now and
 * now + lease + {@linkcode LEASE_MARGIN_MS}: a field without a live lease, or
 * a deadline further ahead than any lease can be (a forged entry), counts for
 * nothing and is deleted by the next script that writes.
 *
 * The epoch key tells a worker whether Redis lost keys behind its back
 * (`FLUSHALL`, `FLUSHDB`, eviction, a restart): a worker sends the token it
 * knows; a missing key or another token means the counts of the slot may be
 * partial, and the script grants nothing.
 *
 * @module
 */

/** How far beyond now + lease a lease deadline may lie and still count, in ms. */
export const LEASE_MARGIN_MS = 1_000;

/** The current Redis time in milliseconds, as Lua local `now`. */
const NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/**
 * Sums the live workers' fields into Lua local `sum` and leaves `worker`'s own
 * live count in `mine`. Needs locals `now`, `lease` and `worker`; with local
 * `prune` true, deletes the dead and forged members and fields it meets.
 */
const LIVE_SUM = `
local horizon = now + lease + ${LEASE_MARGIN_MS}
if prune then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '(' .. horizon, '+inf')
end
local live = {}
local members = redis.call('ZRANGEBYSCORE', KEYS[2], now, horizon)
for i = 1, #members do live[members[i]] = true end
local sum = 0
local mine = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local f = fields[i]
  local v = tonumber(fields[i + 1])
  if live[f] and v and v > 0 then
    sum = sum + v
    if f == worker then mine = v end
  elseif prune then
    redis.call('HDEL', KEYS[1], f)
  end
end
`;

/**
 * Checks the epoch key against Lua local `known` (the token the worker knows,
 * `''` when it knows none) and creates it with `fresh` when it is missing.
 * Leaves the token in `epoch` and in `lost` 1 when the keys of the slot were
 * lost since the worker last looked, else 0.
 */
const EPOCH = `
local epoch = redis.call('GET', KEYS[3])
local lost = 0
if not epoch then
  epoch = fresh
  redis.call('SET', KEYS[3], epoch)
  if known ~= '' then lost = 1 end
elseif known ~= '' and epoch ~= known then
  lost = 1
end
`;

/** Sets `worker`'s field to Lua local `value` and renews its lease and the keys' expiry. */
const WRITE_MINE = `
redis.call('HSET', KEYS[1], worker, value)
redis.call('ZADD', KEYS[2], now + lease, worker)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
`;

/**
 * `acquire(worker, limit, leaseMs, floor, ttlMs, known, fresh, trusted)`:
 * takes one slot for `worker` unless `limit > 0` and the live workers already
 * hold `limit`, or the keys were lost. `floor` is the number of slots the
 * worker knows it holds: a live count below it is raised to it first; when
 * the worker's last write is known to have landed (`trusted` = 1), a count
 * below it means the host's keys were lost. Returns `{granted (0|1), total,
 * lost (0: no, 1: the slot's keys, 2: this host's keys), epoch}`.
 */
export const ACQUIRE_LUA: string = NOW + `
local worker = ARGV[1]
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local floor = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local known = ARGV[6]
local fresh = ARGV[7]
local trusted = ARGV[8] == '1'
local prune = true
` + EPOCH + LIVE_SUM + `
if mine < floor then
  if lost == 0 and trusted then lost = 2 end
  sum = sum + floor - mine
  mine = floor
  local value = mine
` + WRITE_MINE + `
end
if lost > 0 or (limit > 0 and sum >= limit) then
  return {0, sum, lost, epoch}
end
local value = mine + 1
` + WRITE_MINE + `
return {1, sum + 1, 0, epoch}
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
 * `sync(worker, count, leaseMs, ttlMs, known, fresh, floor, trusted)`: sets
 * `worker`'s field to `count`, its own truth, and renews its lease; a count
 * of 0 deletes its field and member. `floor` and `trusted` detect lost keys as
 * in {@linkcode ACQUIRE_LUA}. Returns `{total, lost, epoch}`.
 */
export const SYNC_LUA: string = NOW + `
local worker = ARGV[1]
local count = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local known = ARGV[5]
local fresh = ARGV[6]
local floor = tonumber(ARGV[7])
local trusted = ARGV[8] == '1'
local prune = true
` + EPOCH + LIVE_SUM + `
if lost == 0 and trusted and mine < floor then lost = 2 end
sum = sum - mine
if count <= 0 then
  redis.call('HDEL', KEYS[1], worker)
  redis.call('ZREM', KEYS[2], worker)
  return {sum, lost, epoch}
end
local value = count
` + WRITE_MINE + `
return {sum + count, lost, epoch}
`;

/**
 * `count(leaseMs)`: the slots held by live workers (dead and forged entries
 * ignored, nothing written). Returns the sum.
 */
export const COUNT_LUA: string = NOW + `
local lease = tonumber(ARGV[1])
local worker = ''
local prune = false
` + LIVE_SUM + `
return sum
`;

/**
 * `register(worker, leaseMs, op)` on `KEYS[1]` = `<prefix>:workers` (sorted
 * set: worker id -> lease deadline): `op` `"add"` renews `worker`'s lease,
 * `"del"` removes it, `"list"` changes nothing of it; each first drops the
 * members whose lease has passed or lies further ahead than a lease can be.
 * Returns the live members.
 */
export const REGISTER_LUA: string = NOW + `
local worker = ARGV[1]
local lease = tonumber(ARGV[2])
local op = ARGV[3]
local horizon = now + lease + ${LEASE_MARGIN_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. horizon, '+inf')
if op == 'add' then
  redis.call('ZADD', KEYS[1], now + lease, worker)
elseif op == 'del' then
  redis.call('ZREM', KEYS[1], worker)
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
`;
