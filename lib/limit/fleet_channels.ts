/**
 * {@linkcode FleetChannels}: the Redis limiter's subscriptions. Refusals are
 * published on `<prefix>:pressure` (idle connections elsewhere give their
 * slots up), losses of counts on `<prefix>:lost` (every worker re-asserts),
 * and each host's queue is woken on a channel named like its `q` key (a
 * sharded channel on Cluster) when a slot may have come free.
 *
 * @module
 */

import type { Cluster, Redis } from "ioredis";
import type { RedisKeyNames } from "./redis_key_names.ts";
import { subscriber } from "./redis_client.ts";

/** Options of {@linkcode FleetChannels}. */
export interface FleetChannelsOptions {
  /** The limiter's client, duplicated for the subscription. */
  client: Redis | Cluster;
  /** Whether it is a Cluster client. */
  cluster: boolean;
  /** The keys' names (channels included). */
  keys: RedisKeyNames;
  /** A worker of the fleet was refused a slot of `host`. */
  onPressure: (host: string) => void;
  /** A worker saw Redis lose counts (the message names what). */
  onLost: (message: string) => void;
  /** A slot of `host` may have come free while this worker waits for it. */
  onWake: (host: string) => void;
  /** Whether this worker waits in the queue of `host`. */
  waitsFor: (host: string) => boolean;
}

/** The limiter's subscription to the fleet's channels. */
export class FleetChannels {
  #o: FleetChannelsOptions;
  #sub: Redis | Cluster | null = null;
  /** The queue channels listened to. */
  #watched = new Set<string>();
  /** When pressure on a host was last published, by host. */
  #published = new Map<string, number>();

  /** Creates the channels; nothing is subscribed before {@linkcode subscribe}. */
  constructor(options: FleetChannelsOptions) {
    this.#o = options;
  }

  /** Subscribes to the pressure and loss channels and to the queues of `waited` (once). */
  subscribe(waited: Iterable<string>): void {
    if (this.#sub) return;
    const { pressure, lost } = this.#o.keys;
    // On Cluster, wake-ups come on sharded channels, each from its slot's node.
    const sub = subscriber(this.#o.client, () => [pressure, lost, ...this.#watched]);
    this.#sub = sub;
    sub.on("message", (channel: string, message: string) => {
      if (channel === pressure) this.#o.onPressure(message);
      else if (channel === lost) this.#o.onLost(message);
      else if (this.#o.waitsFor(message)) this.#o.onWake(message);
    });
    sub.on("smessage", (_channel: string, message: string) => {
      if (this.#o.waitsFor(message)) this.#o.onWake(message);
    });
    sub.subscribe(pressure, lost).catch(() => {});
    for (const host of waited) this.watch(host, true);
  }

  /** Whether {@linkcode subscribe} ran. */
  get subscribed(): boolean {
    return this.#sub !== null;
  }

  /** Listens for (or stops listening for) the wake-ups of the queue of `host`. */
  watch(host: string, on: boolean): void {
    const sub = this.#sub;
    if (!sub) return;
    const channel = this.#o.keys.key(host, "q");
    if (on) this.#watched.add(channel);
    else this.#watched.delete(channel);
    const cluster = sub as unknown as {
      ssubscribe(c: string): Promise<unknown>;
      sunsubscribe(c: string): Promise<unknown>;
    };
    const call = this.#o.cluster
      ? (on ? cluster.ssubscribe(channel) : cluster.sunsubscribe(channel))
      : (on ? sub.subscribe(channel) : sub.unsubscribe(channel));
    call.catch(() => {});
  }

  /**
   * Tells the fleet that `host` is at its limit, so that idle connections
   * elsewhere give their slots up; at most once per host every 100 ms.
   */
  publishPressure(host: string): void {
    const now = Date.now();
    if (now - (this.#published.get(host) ?? 0) < 100) return;
    this.#published.set(host, now);
    if (this.#published.size > 10_000) this.#published.clear();
    this.#o.client.publish(this.#o.keys.pressure, host).catch(() => {});
  }

  /** The hosts whose pressure was published in the last 100 ms or so. */
  published(): Iterable<string> {
    return this.#published.keys();
  }

  /** Forgets pressure published more than 100 ms ago (heartbeat). */
  tidy(): void {
    const stale = Date.now() - 100;
    for (const [host, at] of this.#published) if (at < stale) this.#published.delete(host);
  }

  /** Ends the subscription. */
  close(): void {
    this.#sub?.disconnect();
    this.#sub = null;
    this.#watched.clear();
    this.#published.clear();
  }
}
