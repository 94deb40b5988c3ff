/**
 * {@linkcode RedisKeyNames}: the names of the Redis limiter's keys, and the
 * Redis Cluster hash slot of a key.
 *
 * @module
 */

/** The kinds of key each host has: its count hash, its line, its waiting workers and its adaptive state. */
export type HostKeyKind = "n" | "q" | "qw" | "a";

/**
 * Names the keys of a prefix. A host `H` in no group has
 * `<prefix>:{H}:<kind>`; a member of group `G` has
 * `<prefix>:{g:G}:h:H:<kind>`, in the slot of its group. On a single Redis
 * the epoch hash and lease set are `<prefix>:epoch` and `<prefix>:leases`; on
 * Cluster one of each per hash slot, `<prefix>:{<tag>}:epoch` with a tag that
 * hashes to the slot.
 */
export class RedisKeyNames {
  #prefix: string;
  #cluster: boolean;
  /**
   * The group of each host that is a member of one, taken when the host held
   * nothing: its keys are under the group's hash tag.
   */
  readonly groupOf: Map<string, string> = new Map();

  /** Names the keys of `prefix`, per slot when `cluster`. */
  constructor(prefix: string, cluster: boolean) {
    this.#prefix = prefix;
    this.#cluster = cluster;
  }

  /**
   * Puts `host` in `group` (or in none) when it holds nothing (`free`): its
   * keys change only then. Returns the group's limit to send with an acquire:
   * -1 when the host is in no group, 0 when `group` is not the host's.
   */
  join(host: string, group: { name: string; limit: number } | undefined, free: boolean): number {
    if (free) {
      if (group) this.groupOf.set(host, group.name);
      else this.groupOf.delete(host);
    }
    const name = this.groupOf.get(host);
    if (name === undefined) return -1;
    return group?.name === name ? Math.max(0, group.limit) : 0;
  }

  /** The key of `kind` of `host`. */
  key(host: string, kind: HostKeyKind): string {
    const group = this.groupOf.get(host);
    if (group !== undefined) return `${this.#prefix}:{g:${group}}:h:${host}:${kind}`;
    return `${this.#prefix}:{${host}}:${kind}`;
  }

  /** The member set of `host`'s group, or (no group) its count key, unused then. */
  members(host: string): string {
    const group = this.groupOf.get(host);
    if (group !== undefined) return `${this.#prefix}:{g:${group}}:members`;
    return this.key(host, "n");
  }

  /** The epoch key of `host`'s slot. */
  epoch(host: string): string {
    if (!this.#cluster) return `${this.#prefix}:epoch`;
    return `${this.#prefix}:{${slotTag(keySlot(this.key(host, "n")))}}:epoch`;
  }

  /** The lease set of the slot whose epoch key is `epochKey`. */
  leases(epochKey: string): string {
    return `${epochKey.slice(0, -"epoch".length)}leases`;
  }

  /** The worker registry, `<prefix>:workers`. */
  get workers(): string {
    return `${this.#prefix}:workers`;
  }

  /** What worker `id` tells the fleet about itself, `<prefix>:worker:<id>`. */
  worker(id: string): string {
    return `${this.#prefix}:worker:${id}`;
  }

  /** The channel on which refusals are published. */
  get pressure(): string {
    return `${this.#prefix}:pressure`;
  }

  /** The channel on which a loss of counts is told to the fleet. */
  get lost(): string {
    return `${this.#prefix}:lost`;
  }
}

const CRC16 = (() => {
  const table = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    table[i] = c;
  }
  return table;
})();

function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ CRC16[((crc >> 8) ^ b) & 0xff];
  return crc;
}

/** The Redis Cluster hash slot of `key` (its hash tag, when it has one). */
export function keySlot(key: string): number {
  const open = key.indexOf("{");
  if (open >= 0) {
    const close = key.indexOf("}", open + 1);
    if (close > open + 1) key = key.slice(open + 1, close);
  }
  return crc16(new TextEncoder().encode(key)) & 16383;
}

/** Hash tags found so far, by slot, and the next candidate to try. */
const slotTags = new Array<string | undefined>(16384);
let nextTag = 0;

/**
 * A short hash tag (`e<n>`) whose keys land in `slot`: the first such tag,
 * found by scanning on from where the last lookup stopped (all 16384 slots
 * take about 150,000 candidates in all).
 */
export function slotTag(slot: number): string {
  const enc = new TextEncoder();
  while (slotTags[slot] === undefined) {
    const tag = `e${nextTag++}`;
    const s = crc16(enc.encode(tag)) & 16383;
    slotTags[s] ??= tag;
  }
  return slotTags[slot]!;
}
