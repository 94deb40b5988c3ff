/**
 * {@linkcode FleetAdaptive}: the adaptive limits of a fleet, kept in Redis.
 * The answers this worker sees wait here (a few ms) for the next acquire
 * call of their host's slot, which moves the host's state under its hash
 * tag and answers the limit in force, for every worker alike.
 *
 * @module
 */

import {
  adaptiveBounds,
  type AdaptiveBoundsOf,
  type AdaptiveSource,
  type AdaptiveView,
  type HostSample,
} from "./adaptive_limits.ts";
import { ADAPTIVE_REASONS } from "./adaptive_limit.ts";
import type { AcquiredAdaptive } from "./redis_script_codec.ts";

/** Hosts Redis has not answered of for this long are forgotten here. */
const FORGET_MS = 10 * 60_000;

/** Answers kept per host while they wait to be sent; older ones go first. */
const MAX_PENDING = 256;

/** An answer waiting to be sent, with when it came (ms since epoch). */
interface Pending extends HostSample {
  at: number;
}

/** The adaptive limits of the hosts this worker sends to, as Redis keeps them. */
export class FleetAdaptive implements AdaptiveSource {
  #bounds = new Map<string, AdaptiveBoundsOf>();
  #pending = new Map<string, Pending[]>();
  #views = new Map<string, AdaptiveView>();
  /** When Redis last answered each host's limit (ms since epoch). */
  #answeredAt = new Map<string, number>();
  #sweptAt = 0;
  #send: (host: string) => void;
  /** Called when Redis answers another limit for a host than it last did. */
  onChange?: (host: string, view: AdaptiveView) => void;

  /** Creates the limits; `send` asks for a call of `host`'s slot soon. */
  constructor(send: (host: string) => void) {
    this.#send = send;
  }

  /** Notes the bounds of `host`, an adaptive host an acquire names. */
  bound(host: string, bounds: AdaptiveBoundsOf): void {
    this.#bounds.set(host, adaptiveBounds(bounds));
  }

  /** Keeps an answer of `host` for the next call of its slot, and asks for one soon. */
  observe(host: string, sample: HostSample, bounds: AdaptiveBoundsOf): void {
    this.bound(host, bounds);
    let list = this.#pending.get(host);
    if (!list) this.#pending.set(host, list = []);
    if (list.length >= MAX_PENDING) list.shift();
    list.push({ ...sample, at: Date.now() });
    this.#send(host);
  }

  /** Whether answers of `host` wait to be sent. */
  pending(host: string): boolean {
    return this.#pending.has(host);
  }

  /**
   * What an acquire call carries for `host`: its bounds (`""` when its limit
   * is static) and the answers waiting, now taken.
   */
  take(host: string, adaptive: boolean): { adaptive: string; samples: string } {
    const bounds = this.#bounds.get(host);
    const pending = this.#pending.get(host) ?? [];
    this.#pending.delete(host);
    if (!adaptive || !bounds) return { adaptive: "", samples: "" };
    const now = Date.now();
    const samples = pending.map((p) => {
      // Ms since the request was sent, so that Redis places it on its own clock.
      const age = Math.max(0, now - p.at + p.latencyMs);
      return `${p.latencyMs} ${age} ${p.dropped ? 1 : 0} ${p.inflight}`;
    });
    return { adaptive: `${bounds.min} ${bounds.max}`, samples: samples.join(" ") };
  }

  /** Takes in the limit Redis answered for `host`. */
  answered(host: string, answer: AcquiredAdaptive): void {
    const before = this.#views.get(host);
    const view: AdaptiveView = {
      limit: answer.limit,
      reason: ADAPTIVE_REASONS[answer.reason] ?? "hold",
      noLoadMs: answer.noLoadMs,
    };
    this.#views.set(host, view);
    this.#answeredAt.set(host, Date.now());
    if (before?.limit !== view.limit) this.onChange?.(host, view);
  }

  /** The limit of `host` as Redis last answered it. */
  view(host: string): AdaptiveView | undefined {
    return this.#views.get(host);
  }

  /** The hosts whose limit Redis answered. */
  hosts(): Iterable<string> {
    return this.#views.keys();
  }

  /** Forgets the hosts Redis has not answered of for ten minutes (looking once a minute). */
  sweep(now: number): void {
    if (now - this.#sweptAt < 60_000) return;
    this.#sweptAt = now;
    for (const [host, at] of this.#answeredAt) {
      if (now - at < FORGET_MS || this.#pending.has(host)) continue;
      this.#answeredAt.delete(host);
      this.#bounds.delete(host);
      this.#views.delete(host);
    }
  }
}
