/**
 * Slots taken by a test, kept per limiter and host, so that a test about
 * counts can give back "one slot of this host" as the proxy would when one
 * of its connections closes. Tests about the slots themselves use the
 * {@linkcode Slot}s `acquire` returns.
 *
 * @module
 */

import type { AcquireOptions, Limiter, Slot } from "../../lib/limit/limiter.ts";

const held = new WeakMap<Limiter, Map<string, Slot[]>>();

/** Asks `limiter` for a slot of `host`; resolves whether it was granted, and keeps the slot. */
export async function take(
  limiter: Limiter,
  host: string,
  limit: number,
  options?: AcquireOptions,
): Promise<boolean> {
  const slot = await limiter.acquire(host, limit, options);
  if (!slot) return false;
  let hosts = held.get(limiter);
  if (!hosts) held.set(limiter, hosts = new Map());
  const slots = hosts.get(host) ?? [];
  hosts.set(host, slots);
  slots.push(slot);
  return true;
}

/** Gives back one slot of `host` that {@linkcode take} kept (none kept: nothing). */
export function giveBack(limiter: Limiter, host: string): void {
  held.get(limiter)?.get(host)?.pop()?.release();
}
