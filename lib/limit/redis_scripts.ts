/**
 * The Lua scripts of the Redis limiter. For host `H` the count key is
 * `<prefix>:{H}:n` (hash: worker id -> open connections). The workers'
 * leases live once per slot, not per host: in the lease set `L` of the
 * host's slot (sorted set: worker id -> lease deadline in ms;
 * `<prefix>:leases` on a single Redis, `<prefix>:{<tag>}:leases` per slot on
 * Cluster), beside the slot's epoch hash. A heartbeat renews one lease per
 * slot whatever the number of hosts held in it. Every call touches keys of
 * one slot only, so it runs on Redis Cluster. Time comes from Redis `TIME`,
 * never from a worker's clock. No script looks at any other key, so their
 * cost does not depend on the size of the database.
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

import {
  ADAPT,
  EPOCH,
  LEASE_MARGIN_MS,
  LIVE,
  NOW,
  OWN,
  QUEUE,
  RATE,
  WRITE,
} from "./redis_lua_parts.ts";

export { LEASE_MARGIN_MS } from "./redis_lua_parts.ts";

/**
 * A script for Redis Cluster: wake-ups go out on sharded channels
 * (`SPUBLISH`, received with `SSUBSCRIBE` on the node of the host's slot).
 */
export function forCluster(lua: string): string {
  return lua.replaceAll("'PUBLISH'", "'SPUBLISH'");
}

/**
 * `acquire(worker, leaseMs, ttlMs, known, fresh, [host, floor, trusted,
 * releases, groupLimit, pause, rate, adapt, samples, asks, limit...]...)` on
 * `KEYS` = the slot's lease set and epoch hash, then per host its n, group
 * member set, queue q, waiting workers qw and adaptive state a: every host
 * of one call lives in one slot. For each host in
 * turn: first gives back `releases` slots of `worker` (and wakes the queue),
 * then takes one slot per `limit`, in order, for each while `limit` is 0 or
 * the live workers hold fewer than it and the queue lets it through, unless
 * keys were lost. A `limit` may carry a ticket (`"<limit> <ticket>"`):
 * granted, the ticket leaves the queue (see `QUEUE`). For a member of a group
 * (`groupLimit` 0 or more; -1: no group, and its member-set key is unused), a
 * slot also needs the group's members together to hold fewer than
 * `groupLimit` (when above 0): their live counts are summed over the group's
 * member set, in the same slot (members whose keys are gone leave the set).
 * `floor` is the number of slots the worker knows it holds (after the
 * releases): a live count below it is raised to it first; when the worker's
 * last write is known to have landed (`trusted` = 1), a count below it means
 * the host's keys were lost. Returns `{epoch, lost (0: no, 1: the slot's
 * keys), [total, lost (0, 1, or 2: this host's keys), tickets in the queue,
 * paused until (ms; 0: not paused), granted (0|1)...]..., healed...}` (see
 * `OWN`). A `pause` (ms since epoch; 0: none) the host asked for with
 * `Retry-After` is kept in the epoch hash (field `p:<host>`, dropped once
 * passed); while it runs nothing of the host is granted. With a `rate`
 * (see `RATE`; `''`: none), a slot is granted only with a turn under it,
 * taken at once: the grant is then `1 + wait` (ms until the turn), and a
 * slot whose turn would come too late is refused with `-retry` (ms until
 * the next turn). A `limit` of `r` asks a turn alone, no slot: its answer
 * reads the same, and neither a pause nor lost keys refuse it. With
 * `adapt` = `"<min> <max>"` (`''`: a static limit) the host's limit adapts
 * (see `ADAPT`): `samples` (`"<latency> <age> <dropped> <inflight>"`
 * repeated; age: ms since the request was sent) move its state first, each
 * slot is granted under its adaptive limit, and the host's reply carries
 * the limit, the code of its last change and the no-load latency in µs
 * after `paused`.
 */
export const ACQUIRE_LUA: string = NOW + `
local worker = ARGV[1]
local lease = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
` + OWN + LIVE + EPOCH + WRITE + QUEUE + RATE + ADAPT + `
local L, e = KEYS[1], KEYS[2]
own(L, 'zset')
own(e, 'hash')
local epoch, slot_lost = check_epoch(e, ARGV[4], ARGV[5])
local out = {epoch, slot_lost}
-- This worker's lease first: its counts written below (a group's members
-- summed after them) count from the first one.
local had_leases = redis.call('EXISTS', L) == 1
redis.call('ZADD', L, now + lease, worker)
-- Every host of the call is in this slot: its live workers are read once.
local alive = alive_set(L, true)
local a = 6
for k = 3, #KEYS, 5 do
  local n, members, q, qw, akey = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local host = ARGV[a]
  local floor = tonumber(ARGV[a + 1])
  local trusted = ARGV[a + 2] == '1'
  local releases = tonumber(ARGV[a + 3])
  local glimit = tonumber(ARGV[a + 4])
  local pause = tonumber(ARGV[a + 5])
  local rate = ARGV[a + 6]
  local adapt = ARGV[a + 7]
  local samples = ARGV[a + 8]
  local asks = tonumber(ARGV[a + 9])
  a = a + 10
  own(n, 'hash')
  -- A pause the host asked for (Retry-After) lives in the slot's epoch hash.
  local pkey = 'p:' .. host
  local paused = tonumber(redis.call('HGET', e, pkey) or '0') or 0
  if pause > paused then
    redis.call('HSET', e, pkey, pause)
    paused = pause
  end
  if paused <= now then paused = 0 end
  -- An adaptive limit: its state, moved by the answers the worker saw.
  local ast = nil
  if adapt ~= '' then
    own(akey, 'hash')
    local amin, amax = string.match(adapt, '^(%S+) (%S+)$')
    ast = a_load(akey, tonumber(amin), tonumber(amax))
    for lat, age, dropped, inflight in string.gmatch(samples, '(%S+) (%S+) (%S+) (%S+)') do
      a_sample(ast, tonumber(lat), now - tonumber(age), dropped == '1', tonumber(inflight))
      a_roll(ast)
    end
  end
  -- The queue's keys are checked where they are read (prune_queue).
  if asks == 0 then
    -- Slots given back only: no sum to take, no queue to prune.
    local mine = math.max(tonumber(redis.call('HGET', n, worker) or '0') - releases, 0)
    local lost = slot_lost
    if mine < floor then
      if lost == 0 and trusted then lost = 2 end
      mine = floor
    end
    write(n, e, host, worker, mine, ttl)
    if mine <= 0 then unmark_if_gone(e, host, n) end
    if releases > 0 then wake(q, host) end
    out[#out + 1] = -1
    out[#out + 1] = lost
    out[#out + 1] = -1
    out[#out + 1] = paused
    if ast then a_reply(out, ast, akey, ttl) end
  else
    if glimit >= 0 then own(members, 'set') end
    local lost = slot_lost
    local gone, mark = keys_lost(e, host, n, had_leases)
    if lost == 0 and gone then lost = 2 end
    local sum, mine = sum_alive(n, alive, worker, true)
    local changed = false
    if releases > 0 then
      local r = math.min(releases, mine)
      mine = mine - r
      sum = sum - r
      changed = true
    end
    if mine < floor then
      if lost == 0 and trusted then lost = 2 end
      sum = sum + floor - mine
      mine = floor
      changed = true
    end
    local gsum = 0
    if glimit > 0 then
      local self = string.sub(n, 1, -3)
      local list = redis.call('SMEMBERS', members)
      for i = 1, #list do
        local m = list[i]
        if m ~= self then
          own(m .. ':n', 'hash')
          if redis.call('EXISTS', m .. ':n') == 0 then
            redis.call('SREM', members, m)
          else
            gsum = gsum + sum_alive(m .. ':n', alive, '', false)
          end
        end
      end
      gsum = gsum + sum
    end
    local queued = prune_queue(q, qw)
    if releases > 0 and queued then redis.call('PUBLISH', q, host) end
    local cap = nil
    if ast then cap = a_limit(ast) end
    local grants = {}
    for i = a, a + asks - 1 do
      local spec, ticket = string.match(ARGV[i], '^(%S+) ?(.*)$')
      -- 'r': a turn under the rate alone, for a request on an open connection.
      local slot = spec ~= 'r'
      local limit = tonumber(spec) or 0
      -- The adaptive limit, under the static one (its ceiling).
      if cap then limit = cap end
      local code = 0
      if not slot or (lost == 0 and paused == 0 and
          (limit <= 0 or (sum < limit and queue_lets(q, queued, sum, limit, ticket))) and
          (glimit <= 0 or gsum < glimit)) then
        code = 1
        if rate ~= '' then
          local w = turn(e, rate)
          if w < 0 then code = w else code = 1 + w end
        end
      end
      if slot and code >= 1 then
        sum = sum + 1
        gsum = gsum + 1
        mine = mine + 1
        changed = true
        if ticket ~= '' then redis.call('ZREM', q, ticket) end
        -- The fleet's slots held, as evidence that the limit held the host back.
        if ast then ast.peakInflight = math.max(ast.peakInflight, sum) end
      end
      grants[#grants + 1] = code
    end
    a = a + asks
    out[#out + 1] = sum
    out[#out + 1] = lost
    out[#out + 1] = queued and redis.call('ZCARD', q) or 0
    out[#out + 1] = paused
    if ast then a_reply(out, ast, akey, ttl) end
    for i = 1, #grants do out[#out + 1] = grants[i] end
    -- A member of a group renews its member set each time.
    local fresh = glimit < 0 and mark > now + ttl / 2
    if changed then write(n, e, host, worker, mine, ttl, fresh) end
    if mine <= 0 then unmark_if_gone(e, host, n) end
  end
end
redis.call('PEXPIRE', L, ttl)
return with_healed(out)
`;

/**
 * `sync(worker, leaseMs, ttlMs, known, fresh, held, [count, floor, trusted,
 * host]...)` on `KEYS` = epoch hash, lease set `L` of one slot, then n of
 * each host in that slot: renews `worker`'s lease of the slot (one write,
 * however many hosts it holds there), then sets its field of each host given
 * to its `count`, its own truth (0 deletes it), renewing the keys' expiry. A
 * host whose hash holds only this worker's field, at `count` (with `trusted`
 * 1), only has its keys' expiry renewed.
 * `floor` and `trusted` detect lost keys as in {@linkcode ACQUIRE_LUA}. With
 * `held` = 1 the worker's lease of the slot cannot have passed: a lease found
 * missing means the lease set was lost; `held` = `"leave"` (with every count
 * 0) ends the lease instead. Also drops up to four marks of hosts
 * whose keys have expired. Returns `{epoch, lost (0: no, 1: the slot's
 * keys), [total, hostLost]..., healed...}`.
 */
export const SYNC_LUA: string = NOW + `
local worker = ARGV[1]
local lease = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local e = KEYS[1]
local L = KEYS[2]
` + OWN + LIVE + EPOCH + WRITE + `
for i = 1, #KEYS do own(KEYS[i], i == 2 and 'zset' or 'hash') end
local epoch, lost = check_epoch(e, ARGV[4], ARGV[5])
-- The slot's lease set, pruned as live() would, then this worker's lease.
local had_leases = redis.call('EXISTS', L) == 1
redis.call('ZREMRANGEBYSCORE', L, '-inf', '(' .. now)
redis.call('ZREMRANGEBYSCORE', L, '(' .. (now + lease + ${LEASE_MARGIN_MS}), '+inf')
if ARGV[6] == 'leave' then
  redis.call('ZREM', L, worker)
elseif redis.call('ZADD', L, now + lease, worker) == 1 and ARGV[6] == '1' then
  lost = 1
end
redis.call('PEXPIRE', L, ttl)
local out = {epoch, lost}
local o = 2
for h = 0, #KEYS - 3 do
  local n = KEYS[3 + h]
  local count = tonumber(ARGV[7 + 4 * h])
  local floor = tonumber(ARGV[8 + 4 * h])
  local trusted = ARGV[9 + 4 * h] == '1'
  local host = ARGV[10 + 4 * h]
  local hostLost = 0
  local fields = trusted and count > 0 and redis.call('HGETALL', n) or {}
  if #fields == 2 and fields[1] == worker and tonumber(fields[2]) == count then
    -- Only this worker's count, as it knows it: renew the keys, nothing else.
    renew_keys(n, e, host, ttl)
    out[o + 1] = count
  else
    if keys_lost(e, host, n, had_leases) then hostLost = 2 end
    local sum, mine = live(n, L, worker, true)
    if trusted and mine < floor then hostLost = 2 end
    write(n, e, host, worker, count, ttl)
    unmark_if_gone(e, host, n)
    out[o + 1] = sum - mine + math.max(count, 0)
  end
  out[o + 2] = hostLost
  o = o + 2
end
-- HRANDFIELD needs Redis 6.2; older ones keep expired marks until touched.
local ok, sample = pcall(redis.call, 'HRANDFIELD', e, 4, 'WITHVALUES')
if ok then
  for i = 1, #sample, 2 do
    if sample[i] ~= '' and (tonumber(sample[i + 1]) or 0) <= now then
      redis.call('HDEL', e, sample[i])
    end
  end
end
return with_healed(out)
`;

/**
 * `count(leaseMs)` on `KEYS` = n and lease set of each host: the slots held by live
 * workers (dead and forged entries ignored, nothing written but keys of
 * another type deleted). Returns the sums, one per host, then `healed...`.
 */
export const COUNT_LUA: string = NOW + `
local lease = tonumber(ARGV[1])
` + OWN + LIVE + `
for i = 1, #KEYS do own(KEYS[i], i % 2 == 1 and 'hash' or 'zset') end
local out = {}
for h = 0, #KEYS / 2 - 1 do
  local sum = live(KEYS[1 + 2 * h], KEYS[2 + 2 * h], '', false)
  out[#out + 1] = sum
end
return with_healed(out)
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

/**
 * `queue(worker, leaseMs, ttlMs, op, host, adds, ticket...)` on `KEYS` = queue
 * q, waiting workers qw of one host: puts the first `adds` tickets at the end
 * of the queue (in order; one already in it keeps its place) and takes the
 * others out. `op` `"renew"` also renews `worker`'s waiting lease (the
 * heartbeat sends every ticket it waits with, so that lost ones come back),
 * `"leave"` ends it (the worker waits no more). Taking tickets out wakes the
 * queue: the next may now go. Returns `{length of the queue, healed...}`.
 */
export const QUEUE_LUA: string = NOW + `
local worker = ARGV[1]
local lease = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local op = ARGV[4]
local host = ARGV[5]
local adds = tonumber(ARGV[6])
local q = KEYS[1]
local qw = KEYS[2]
` + OWN + QUEUE + `
own(q, 'zset')
own(qw, 'zset')
prune_queue(q, qw)
for i = 7, 6 + adds do add_ticket(q, qw, worker, ARGV[i]) end
local removed = 0
for i = 7 + adds, #ARGV do removed = removed + redis.call('ZREM', q, ARGV[i]) end
if op == 'leave' then
  redis.call('ZREM', qw, worker)
elseif op == 'renew' or adds > 0 then
  redis.call('ZADD', qw, now + lease, worker)
end
if redis.call('EXISTS', q) == 1 then
  redis.call('PEXPIRE', q, ttl)
  redis.call('PEXPIRE', qw, ttl)
end
if removed > 0 then wake(q, host) end
return with_healed({redis.call('ZCARD', q)})
`;
