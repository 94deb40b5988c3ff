/**
 * {@linkcode assembleParts}: the parts of the Redis limiter, built and wired
 * to each other in one place.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { FailureMode } from "./redis_config.ts";
import type { LimiterContext } from "./limiter_context.ts";
import type { RedisConnection } from "./redis_connection.ts";
import type { RedisKeyNames } from "./redis_key_names.ts";
import type { HostLedger } from "./host_ledger.ts";
import { LossRecovery } from "./loss_recovery.ts";
import { FleetCounts } from "./fleet_counts.ts";
import { SyncSender } from "./sync_pipeline.ts";
import { FailureFallback } from "./failure_fallback.ts";
import { FleetQueue } from "./fleet_queue.ts";
import { AcquireCalls } from "./acquire_calls.ts";
import { KeptSlots } from "./kept_slots.ts";
import { FleetChannels } from "./fleet_channels.ts";
import { Heartbeat, TTL_LEASES } from "./heartbeat.ts";
import { WorkerRegistry } from "./worker_registry.ts";
import { defineScripts } from "./redis_script_codec.ts";
import { FleetAdaptive } from "./fleet_adaptive.ts";

/** What the limiter itself brings to its parts. */
export interface PartsBase {
  /** The connection. */
  conn: RedisConnection;
  /** The keys' names. */
  keys: RedisKeyNames;
  /** This worker's id. */
  worker: string;
  /** The lease, in ms. */
  lease: number;
  /** The failure mode. */
  mode: FailureMode;
  /** Where state changes are logged. */
  logger: Logger;
  /** This worker's accounting. */
  ledger: HostLedger;
  /** The fleet's counts by host, as last learnt. */
  fleet: Map<string, number>;
  /** Hosts whose field in Redis this worker may hold. */
  touched: Set<string>;
  /** Whether the limiter is closed. */
  closed: () => boolean;
  /** Called with the duration in ms of every Redis call. */
  onCall: (ms: number) => void;
  /** A worker of the fleet was refused a slot of `host`. */
  onPressure: (host: string) => void;
  /** A slot of `host` may have come free while this worker waits for it. */
  onWake: (host: string) => void;
  /** Redis says `host` is paused until `until` (ms since epoch). */
  onPause: (host: string, until: number) => void;
  /** Forgets a host that holds nothing and that Redis agrees on. */
  collect: (host: string) => void;
}

/** The parts of the Redis limiter. */
export interface LimiterParts {
  /** What the parts share. */
  ctx: LimiterContext;
  /** Acquires and releases, in calls per slot. */
  calls: AcquireCalls;
  /** The failure mode's decisions. */
  fallback: FailureFallback;
  /** The fleet's queues. */
  queue: FleetQueue;
  /** Slots kept for the next acquire of their host. */
  kept: KeptSlots;
  /** The fleet's channels. */
  channels: FleetChannels;
  /** The heartbeat. */
  heartbeat: Heartbeat;
  /** The fleet's counts. */
  counts: FleetCounts;
  /** The worker registry. */
  registry: WorkerRegistry;
  /** The fleet's adaptive limits. */
  adaptive: FleetAdaptive;
}

/** Builds the parts of a Redis limiter and defines its scripts on the client. */
export function assembleParts(base: PartsBase): LimiterParts {
  const { conn, keys, ledger, collect } = base;
  const { client, cluster } = conn;
  const p = {} as LimiterParts;
  const recovery = new LossRecovery({
    ...base,
    publish: (channel, message) => void client.publish(channel, message).catch(() => {}),
    reassert: () => {
      for (const host of ledger.hosts()) ledger.markDirty(host);
      p.heartbeat.beat();
    },
  });
  const ctx: LimiterContext = {
    ...base,
    client,
    ttl: base.lease * TTL_LEASES,
    call: (op) => conn.call(op, base.onCall),
    recovery,
  };
  p.ctx = ctx;
  p.counts = new FleetCounts(ctx);
  p.registry = new WorkerRegistry(ctx);
  p.fallback = new FailureFallback({ mode: base.mode, ledger, keys, collect });
  p.queue = new FleetQueue({
    ...ctx,
    canSend: () => !base.closed() && !conn.failFast(),
    schedule: () => p.calls.turn(),
    watch: (host, on) => p.channels.watch(host, on),
    healed: (healed) => recovery.healed(healed),
  });
  p.adaptive = new FleetAdaptive((host) => p.calls.sample(host));
  p.calls = new AcquireCalls({
    ...ctx,
    queue: p.queue,
    adaptive: p.adaptive,
    decide: (host, acquire, cause) => p.fallback.decide(host, acquire, cause),
    refused: (host) => p.channels.publishPressure(host),
    collect,
    syncNow: (host) => p.heartbeat.syncNow(host),
    paused: (host, until) => {
      p.kept.giveBackAll(host);
      base.onPause(host, until);
    },
  });
  p.kept = new KeptSlots({
    ...ctx,
    queued: (host) => p.queue.waitsFor(host),
    gaveBack: (host) => {
      p.calls.send(host);
      collect(host);
    },
  });
  p.channels = new FleetChannels({
    client,
    cluster,
    keys,
    onPressure: (host) => {
      p.kept.giveBackAll(host);
      base.onPressure(host);
    },
    onLost: (message) => recovery.notice(message),
    onWake: base.onWake,
    waitsFor: (host) => p.queue.waitsFor(host),
  });
  p.heartbeat = new Heartbeat({
    ...ctx,
    ...p,
    sender: new SyncSender({ client, cluster, call: ctx.call }),
    touched: base.touched,
    collect,
    resume: (host) => p.calls.send(host),
    logger: base.logger,
  });
  defineScripts(client, cluster);
  return p;
}
