/**
 * {@linkcode HostPauses}: hosts that asked, with `Retry-After` on a 429 or
 * 503, not to be sent anything for a while, and until when. No I/O: the
 * caller passes the time.
 *
 * @module
 */

/** One paused host. */
export interface HostPause {
  /** When the pause ends (ms since epoch). */
  until: number;
  /** The status that asked for it (429 or 503). */
  status: number;
}

/** The paused hosts of this process. */
export class HostPauses {
  #paused = new Map<string, HostPause>();

  /**
   * Pauses `key` until `until` (ms since epoch), asked by a response of
   * `status`; a pause already running further is kept. Returns whether this
   * started or lengthened a pause.
   */
  pause(key: string, until: number, status: number): boolean {
    const current = this.#paused.get(key);
    if (current && current.until >= until) return false;
    this.#paused.set(key, { until, status });
    return true;
  }

  /** The pause of `key` running at `now`, if any (an ended one is forgotten). */
  get(key: string, now: number): HostPause | undefined {
    const pause = this.#paused.get(key);
    if (pause === undefined) return undefined;
    if (pause.until > now) return pause;
    this.#paused.delete(key);
    return undefined;
  }

  /** Every pause running at `now`, by host. */
  running(now: number): Map<string, HostPause> {
    for (const [key, pause] of this.#paused) if (pause.until <= now) this.#paused.delete(key);
    return new Map(this.#paused);
  }
}
