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

/** How far beyond now + lease a lease deadline may lie and still count, in ms. */
export const LEASE_MARGIN_MS = 1_000;

/** The current Redis time in milliseconds, as Lua local `now`. */
const NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/**
 * Lua function `own(key, kind)`: deletes `key` when it holds another type
 * than `kind` (`'hash'`, `'zset'`, `'set'`), which dprl never writes there
 * (a stray `SET` by hand), and lists it in local `healed` as key, type,
 * kind; every script that answers a table ends its answer with `healed`.
 * Run on every key a script touches before the first command on it.
 */
const OWN = `
local healed = {}
local function own(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= kind then
    redis.call('DEL', key)
    healed[#healed + 1] = key
    healed[#healed + 1] = t
    healed[#healed + 1] = kind
  end
end
local function with_healed(out)
  for i = 1, #healed do out[#out + 1] = healed[i] end
  return out
end
`;

/**
 * Lua functions of the live workers. Need locals `now` and `lease`.
 *
 * - `alive_set(L, prune)`: the workers whose lease in the lease set `L` is
 *   live, as a set; with `prune` true, deletes the dead and forged members.
 * - `sum_alive(n, alive, worker, prune)`: the sum of the `alive` workers'
 *   fields of one host and `worker`'s own live count; with `prune` true,
 *   deletes the fields of the others.
 * - `live(n, L, worker, prune)`: both at once, for one host.
 */
const LIVE = `
local function alive_set(L, prune)
  local horizon = now + lease + ${LEASE_MARGIN_MS}
  if prune then
    redis.call('ZREMRANGEBYSCORE', L, '-inf', '(' .. now)
    redis.call('ZREMRANGEBYSCORE', L, '(' .. horizon, '+inf')
  end
  local alive = {}
  local members = redis.call('ZRANGEBYSCORE', L, now, horizon)
  for i = 1, #members do alive[members[i]] = true end
  return alive
end
local function sum_alive(n, alive, worker, prune)
  local sum = 0
  local mine = 0
  local fields = redis.call('HGETALL', n)
  for i = 1, #fields, 2 do
    local f = fields[i]
    local v = tonumber(fields[i + 1])
    if alive[f] and v and v > 0 then
      sum = sum + v
      if f == worker then mine = v end
    elseif prune then
      redis.call('HDEL', n, f)
    end
  end
  return sum, mine
end
local function live(n, L, worker, prune)
  return sum_alive(n, alive_set(L, prune), worker, prune)
end
`;

/**
 * Lua functions of the epoch hash `e` of a slot: field `''` holds the token,
 * and field `<host>` the time until which the host's keys must exist (their
 * expiry, less a second), so that a worker can tell lost keys from keys that
 * were never there or expired. Need locals `now` and `lease`.
 *
 * - `check_epoch(e, known, fresh)`: checks the token against the one the
 *   worker knows (`''` when it knows none) and creates it with `fresh` when
 *   the hash is missing. Returns the token and 1 when the keys of the slot
 *   were lost since the worker last looked, else 0.
 * - `keys_lost(e, host, n, had_leases)`: whether the host's keys are missing
 *   while they must exist (`had_leases`: the slot's lease set existed when
 *   the script started, before it renewed the worker's lease), and the
 *   host's mark. Then the holders are expected to re-assert within a
 *   heartbeat; past a lease none is alive, and the mark is dropped.
 * - `unmark_if_gone(e, host, n)`: drops the mark of a host whose keys are gone.
 */
const EPOCH = `
local function check_epoch(e, known, fresh)
  local epoch = redis.call('HGET', e, '')
  if not epoch then
    redis.call('HSET', e, '', fresh)
    if known ~= '' then return fresh, 1 end
    return fresh, 0
  end
  if known ~= '' and epoch ~= known then return epoch, 1 end
  return epoch, 0
end
local function keys_lost(e, host, n, had_leases)
  local deadline = tonumber(redis.call('HGET', e, host) or '0') or 0
  if deadline <= now then return false, deadline end
  if had_leases and redis.call('EXISTS', n) == 1 then return false, deadline end
  redis.call('HSET', e, host, math.min(deadline, now + lease))
  return true, deadline
end
local function unmark_if_gone(e, host, n)
  if redis.call('EXISTS', n) == 0 then redis.call('HDEL', e, host) end
end
`;

/**
 * Lua functions that write a host's keys. Need locals `now` and `lease`.
 * The caller renews the worker's lease of the slot (and the lease set's
 * expiry) once per call, not once per host.
 *
 * - `renew_keys(n, e, host, ttl)`: renews the keys' expiry and the host's
 *   mark in the epoch hash. A member of a group (keys
 *   `<prefix>:{g:<group>}:h:<host>:n`) is also listed in the group's member
 *   set, `<prefix>:{g:<group>}:members`, whose expiry every member's renewal
 *   renews.
 * - `write(n, e, host, worker, value, ttl, fresh)`: sets `worker`'s field to
 *   `value` and, unless `fresh` (the keys outlive half their expiry still),
 *   renews the keys (`renew_keys`); a value of 0 deletes its field.
 */
const WRITE = `
local function renew_keys(n, e, host, ttl)
  local member = string.match(n, '^(.-{g:[^}]*}:h:.*):n$')
  if member then
    local members = string.match(member, '^(.-{g:[^}]*}):h:') .. ':members'
    redis.call('SADD', members, member)
    redis.call('PEXPIRE', members, ttl)
  end
  redis.call('PEXPIRE', n, ttl)
  redis.call('HSET', e, host, now + ttl - 1000)
end
local function write(n, e, host, worker, value, ttl, fresh)
  if value <= 0 then
    -- The lease stays: it is the slot's, and outlives the worker's last field.
    redis.call('HDEL', n, worker)
    return
  end
  redis.call('HSET', n, worker, value)
  if not fresh then renew_keys(n, e, host, ttl) end
end
`;

/**
 * The fleet's queue of waiting requests for one host (issue: waiting for a
 * slot). `<prefix>:{H}:q` is a sorted set of tickets (member `<worker>|<n>`,
 * score the enqueue time from Redis `TIME`, never lower than the last
 * ticket's); `<prefix>:{H}:qw` a sorted set of the waiting workers' lease
 * deadlines. A ticket counts only while its worker's lease lives: the tickets
 * of a worker whose lease passed are deleted with it, and tickets at the front
 * of the queue without a waiting worker go too. Releases wake the queue with a
 * message on the channel named like the `q` key ({@linkcode forCluster} makes
 * it a sharded channel). Need locals `now` and `lease`.
 *
 * - `prune_queue(q, qw)`: drops dead workers and their tickets (nothing to do
 *   while nobody waits; keys of another type are deleted, see `OWN`); returns
 *   whether anyone still waits.
 * - `queue_lets(q, queued, sum, limit, ticket)`: whether the queue (`queued`:
 *   anyone waits in it) lets an acquire through: one without a ticket (`''`)
 *   only while the slots left exceed the tickets waiting, one with a ticket
 *   only while its rank is below `limit - sum`; a ticket missing from the
 *   queue (lost keys, or granted already) asks as a newcomer (the heartbeat
 *   puts lost ones back).
 * - `add_ticket(q, qw, worker, ticket)`: puts a ticket at the end of the queue
 *   unless it is in it, and renews the worker's waiting lease.
 * - `wake(q, host)`: tells the waiting workers that a slot may be free, when
 *   anyone waits.
 */
const QUEUE = `
local function owner_of(ticket)
  return string.match(ticket, '^(.*)|') or ''
end
local function prune_queue(q, qw)
  if redis.call('EXISTS', q) == 0 then return false end
  own(q, 'zset')
  own(qw, 'zset')
  if redis.call('EXISTS', q) == 0 then return false end
  local horizon = now + lease + ${LEASE_MARGIN_MS}
  local dead = {}
  local any = false
  local gone = redis.call('ZRANGEBYSCORE', qw, '-inf', '(' .. now)
  local forged = redis.call('ZRANGEBYSCORE', qw, '(' .. horizon, '+inf')
  for _, list in ipairs({gone, forged}) do
    for i = 1, #list do
      dead[list[i]] = true
      any = true
      redis.call('ZREM', qw, list[i])
    end
  end
  if any then
    local tickets = redis.call('ZRANGE', q, 0, -1)
    for i = 1, #tickets do
      if dead[owner_of(tickets[i])] then redis.call('ZREM', q, tickets[i]) end
    end
  end
  local front = redis.call('ZRANGE', q, 0, 63)
  local waiting = {}
  for i = 1, #front do
    local owner = owner_of(front[i])
    if waiting[owner] == nil then
      waiting[owner] = redis.call('ZSCORE', qw, owner) ~= false
    end
    if not waiting[owner] then redis.call('ZREM', q, front[i]) end
  end
  return redis.call('EXISTS', q) == 1
end
local function add_ticket(q, qw, worker, ticket)
  if redis.call('ZSCORE', q, ticket) then return end
  local score = now
  local last = redis.call('ZRANGE', q, -1, -1, 'WITHSCORES')
  if #last == 2 then score = math.max(score, tonumber(last[2])) end
  redis.call('ZADD', q, score, ticket)
  redis.call('ZADD', qw, now + lease, worker)
end
local function queue_lets(q, queued, sum, limit, ticket)
  local rank = false
  if not queued then return sum < limit end
  if ticket ~= '' then rank = redis.call('ZRANK', q, ticket) end
  if not rank then return sum + redis.call('ZCARD', q) < limit end
  return rank < limit - sum
end
local function wake(q, host)
  if redis.call('EXISTS', q) == 1 then redis.call('PUBLISH', q, host) end
end
`;

/**
 * A script for Redis Cluster: wake-ups go out on sharded channels
 * (`SPUBLISH`, received with `SSUBSCRIBE` on the node of the host's slot).
 */
export function forCluster(lua: string): string {
  return lua.replaceAll("'PUBLISH'", "'SPUBLISH'");
}

/**
 * `acquire(worker, leaseMs, ttlMs, known, fresh, [host, floor, trusted,
 * releases, groupLimit, pause, asks, limit...]...)` on `KEYS` = the slot's lease set
 * and epoch hash, then per host its n, group member set, queue q and waiting
 * workers qw: every host of one call lives in one slot. For each host in
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
 * passed); while it runs nothing of the host is granted.
 */
export const ACQUIRE_LUA: string = NOW + `
local worker = ARGV[1]
local lease = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
` + OWN + LIVE + EPOCH + WRITE + QUEUE + `
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
for k = 3, #KEYS, 4 do
  local n, members, q, qw = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local host = ARGV[a]
  local floor = tonumber(ARGV[a + 1])
  local trusted = ARGV[a + 2] == '1'
  local releases = tonumber(ARGV[a + 3])
  local glimit = tonumber(ARGV[a + 4])
  local pause = tonumber(ARGV[a + 5])
  local asks = tonumber(ARGV[a + 6])
  a = a + 7
  own(n, 'hash')
  -- A pause the host asked for (Retry-After) lives in the slot's epoch hash.
  local pkey = 'p:' .. host
  local paused = tonumber(redis.call('HGET', e, pkey) or '0') or 0
  if pause > paused then
    redis.call('HSET', e, pkey, pause)
    paused = pause
  end
  if paused <= now then paused = 0 end
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
    local grants = {}
    for i = a, a + asks - 1 do
      local limit, ticket = string.match(ARGV[i], '^(%S+) ?(.*)$')
      limit = tonumber(limit)
      if lost == 0 and paused == 0 and
          (limit <= 0 or (sum < limit and queue_lets(q, queued, sum, limit, ticket))) and
          (glimit <= 0 or gsum < glimit) then
        sum = sum + 1
        gsum = gsum + 1
        mine = mine + 1
        changed = true
        if ticket ~= '' then redis.call('ZREM', q, ticket) end
        grants[#grants + 1] = 1
      else
        grants[#grants + 1] = 0
      end
    end
    a = a + asks
    out[#out + 1] = sum
    out[#out + 1] = lost
    out[#out + 1] = queued and redis.call('ZCARD', q) or 0
    out[#out + 1] = paused
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
