/**
 * The Lua functions the Redis limiter's scripts are made of (see
 * `redis_scripts.ts` for the keys they work on): Redis time, healing keys
 * of a wrong type, live workers, the epoch hash, writes, the fleet's queue,
 * request rates and adaptive limits. Each is Lua source that a script puts before its own.
 *
 * @module
 */

import { ADAPTIVE_TUNING } from "./adaptive_limit.ts";

/** How far beyond now + lease a lease deadline may lie and still count, in ms. */
export const LEASE_MARGIN_MS = 1_000;

/** The current Redis time in milliseconds, as Lua local `now`. */
export const NOW: string = `
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
export const OWN: string = `
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
export const LIVE: string = `
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
export const EPOCH: string = `
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
export const WRITE: string = `
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
export const QUEUE: string = `
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
 * Lua function `turn(e, spec)` of request rates (GCRA, as `gcraTurn` in
 * `gcra.ts`, on the same 2^-10 ms grid): `spec` is
 * `"<field> <periodMs> <maxWaitMs>"`; the rate's theoretical arrival time
 * lives in field `r:<field>` of the epoch hash `e` (a time, so the sweep of
 * passed marks drops it once passed). Returns the ms to wait for the turn
 * taken (0: now), or minus the ms after which one comes when none comes
 * within `maxWaitMs` (nothing taken). Needs local `now`.
 */
export const RATE: string = `
local grid = 1 / 1024
local function turn(e, spec)
  local field, period, wait = string.match(spec, '^(%S+) (%S+) (%S+)$')
  local key = 'r:' .. field
  period = math.ceil(tonumber(period) / grid) * grid
  local tat = math.ceil((tonumber(redis.call('HGET', e, key) or '0') or 0) / grid) * grid
  local at = now
  if now < tat then
    local retry = math.ceil(tat - now)
    if retry > tonumber(wait) then return -retry end
    at = now + retry
  end
  redis.call('HSET', e, key, string.format('%.10f', math.max(tat, at) + period))
  return at - now
end
`;

const T = ADAPTIVE_TUNING;

/**
 * The adaptive limit of `adaptive_limit.ts` in Lua, the same arithmetic on
 * the same state (a hash of its fields, `'%.17g'` so that every double
 * reads back exactly), on Redis time. Needs local `now`.
 *
 * - `a_load(key, min, max)`: the state of the hash `key` within the bounds,
 *   a new one at its floor when missing.
 * - `a_sample(st, latency, sentAt, dropped, inflight)`, then
 *   `a_roll(st)`: `sample` and `roll`; `a_roll` returns the reason's code.
 * - `a_limit(st)`: `effectiveLimit`.
 * - `a_save(key, st, ttl)`: writes the state back.
 * - `a_reply(out, st, key, ttl)`: saves the state and appends the limit,
 *   the reason of its last change and the no-load latency to `out`.
 */
export const ADAPT: string = `
local A_FIELDS = {'min', 'max', 'limit', 'windowStart', 'samples', 'latencySum', 'drops',
  'peakInflight', 'noLoadMs', 'probing', 'savedLimit', 'probeAt', 'backoffAt', 'reason'}
local A_PROBE, A_RESTORE, A_GROW, A_DROP, A_LATENCY, A_HOLD, A_WAIT = 0, 1, 2, 3, 4, 5, 6
local function a_init(min, max)
  local floor = math.max(1, math.floor(min))
  local ceiling = math.max(floor, math.floor(max))
  return {min = floor, max = ceiling, limit = floor, windowStart = now, samples = 0,
    latencySum = 0, drops = 0, peakInflight = 0, noLoadMs = 0, probing = 1,
    savedLimit = floor, probeAt = now, backoffAt = now, reason = A_PROBE}
end
local function a_load(key, min, max)
  local raw = redis.call('HGETALL', key)
  local st = {}
  for i = 1, #raw, 2 do st[raw[i]] = tonumber(raw[i + 1]) end
  for i = 1, #A_FIELDS do
    if st[A_FIELDS[i]] == nil then return a_init(min, max) end
  end
  -- The rules changed: the same controller within the new bounds.
  st.min = min
  st.max = max
  return st
end
local function a_limit(st)
  return math.min(st.max, math.max(st.min, math.floor(st.limit)))
end
local function a_next_probe(t)
  local m = 2147483647
  local x = math.fmod(math.floor(math.abs(t)), m)
  x = math.fmod(x * 48271, m)
  x = math.fmod(x * 48271, m)
  return t + math.floor(${T.probeMs} * (1 + ${T.probeJitter} * (x / m)))
end
local function a_open(st, changes)
  st.windowStart = now
  st.samples = 0
  st.latencySum = 0
  st.drops = 0
  st.peakInflight = 0
  for k, v in pairs(changes) do st[k] = v end
end
local function a_sample(st, latency, sentAt, dropped, inflight)
  local valid = latency == latency and latency >= 0 and latency < math.huge
  if not valid then sentAt = now end
  if not (inflight == inflight and inflight > -math.huge and inflight < math.huge) then inflight = 0 end
  st.peakInflight = math.max(st.peakInflight, inflight)
  if dropped then
    if sentAt >= st.backoffAt then st.drops = st.drops + 1 end
    return
  end
  if not valid or sentAt < st.windowStart then return end
  st.samples = st.samples + 1
  st.latencySum = st.latencySum + latency
end
local function a_end_probe(st)
  local probeAt = a_next_probe(now)
  if st.drops > 0 then
    a_open(st, {limit = math.max(st.min, st.savedLimit * ${T.backoff}), probing = 0,
      probeAt = probeAt, backoffAt = now, reason = A_DROP})
    return A_DROP
  end
  a_open(st, {limit = st.savedLimit, noLoadMs = st.latencySum / st.samples, probing = 0,
    probeAt = probeAt, reason = A_RESTORE})
  return A_RESTORE
end
local function a_gradient(st, mean, noLoad)
  local ratio = ${T.tolerance} * (noLoad + ${T.latencyFloorMs}) / (mean + ${T.latencyFloorMs})
  local gradient = math.min(${T.maxGradient}, math.max(${T.minGradient}, ratio))
  local scaled = st.limit * gradient
  local nxt = scaled + math.sqrt(scaled)
  if nxt > st.limit and st.peakInflight < math.floor(st.limit) then return st.limit end
  return nxt
end
local function a_roll(st)
  if st.drops == 0 and (st.samples < ${T.minSamples} or
      (st.probing ~= 1 and now - st.windowStart < ${T.windowMs})) then
    return A_WAIT
  end
  if st.probing == 1 then return a_end_probe(st) end
  if st.drops > 0 then
    local limit = math.max(st.min, st.limit * ${T.backoff})
    local reason = A_HOLD
    if limit < st.limit then reason = A_DROP end
    local last = st.reason
    if reason ~= A_HOLD then last = reason end
    a_open(st, {limit = limit, backoffAt = now, reason = last})
    return reason
  end
  local mean = st.latencySum / st.samples
  local idle = st.peakInflight <= st.min
  local noLoad = math.min(st.noLoadMs, mean)
  if idle or st.noLoadMs <= 0 then noLoad = mean end
  local probeAt = st.probeAt
  if idle then probeAt = a_next_probe(now) end
  if now >= probeAt then
    a_open(st, {limit = st.min, savedLimit = st.limit, probing = 1, reason = A_PROBE})
    return A_PROBE
  end
  local nxt = math.min(st.max, math.max(st.min, a_gradient(st, mean, noLoad)))
  local reason = A_HOLD
  if nxt > st.limit then reason = A_GROW elseif nxt < st.limit then reason = A_LATENCY end
  local last = st.reason
  if reason ~= A_HOLD then last = reason end
  a_open(st, {limit = nxt, noLoadMs = noLoad, probeAt = probeAt, reason = last})
  return reason
end
local function a_save(key, st, ttl)
  local args = {}
  for i = 1, #A_FIELDS do
    args[#args + 1] = A_FIELDS[i]
    args[#args + 1] = string.format('%.17g', st[A_FIELDS[i]])
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttl)
end
local function a_reply(out, st, key, ttl)
  a_save(key, st, ttl)
  out[#out + 1] = a_limit(st)
  out[#out + 1] = st.reason
  out[#out + 1] = math.floor(st.noLoadMs * 1000 + 0.5)
end
`;
