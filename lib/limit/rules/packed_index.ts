/**
 * Host patterns packed into one string and two typed arrays, matched as
 * `HostIndex` matches them: built where the rules are compiled
 * and adopted by another thread without a per-pattern allocation.
 *
 * @module
 */

/**
 * A packed index as plain data: one string and two typed arrays, whose
 * buffers can be transferred to another thread (see
 * {@linkcode packedBuffers}).
 */
export interface PackedIndexData {
  /** The normalised patterns, one a line. */
  patterns: string;
  /**
   * Where each pattern starts in `patterns`, and one more entry past the
   * end (`patterns.length + 1`): pattern `i` ends one before `starts[i + 1]`.
   */
  starts: Uint32Array;
  /**
   * An open-addressing hash table of the patterns (power-of-two size, at
   * least twice the number of patterns, linear probing): a slot holds a
   * pattern's index plus one, 0 when empty.
   */
  slots: Int32Array;
}

/** FNV-1a's offset basis. */
const BASIS = 0x811c9dc5;
/** FNV-1a's prime. */
const PRIME = 0x01000193;
/** The code units of `*` and `.`. */
const STAR = 42;
const DOT = 46;
/** The hash of `*.`, where every wildcard candidate's hash starts. */
const STAR_DOT = Math.imul(Math.imul(BASIS ^ STAR, PRIME) ^ DOT, PRIME);

/** FNV-1a over the UTF-16 code units of `text` from `from` to `to`, after `hash`. */
function hashRange(hash: number, text: string, from: number, to: number): number {
  for (let i = from; i < to; i++) hash = Math.imul(hash ^ text.charCodeAt(i), PRIME);
  return hash;
}

/**
 * Packs distinct normalised patterns (see `parseHostPattern`): pattern `i`
 * of the result is `patterns[i]`.
 *
 * @example
 * ```ts
 * import { PackedIndex, packPatterns } from "./packed_index.ts";
 * const index = new PackedIndex(packPatterns(["a.example", "*.example"]));
 * index.match("a.example:8443"); // 0
 * index.match("b.example"); // 1
 * index.match("example"); // -1
 * ```
 */
export function packPatterns(patterns: readonly string[]): PackedIndexData {
  const text = patterns.join("\n");
  const n = patterns.length;
  const starts = new Uint32Array(n + 1);
  for (let i = 0, at = 0; i <= n; i++) {
    starts[i] = at;
    if (i < n) at += patterns[i].length + 1;
  }
  let size = 1;
  while (size < 2 * n) size *= 2;
  const slots = new Int32Array(size);
  const mask = size - 1;
  for (let i = 0; i < n; i++) {
    let slot = hashRange(BASIS, text, starts[i], starts[i + 1] - 1) & mask;
    while (slots[slot] !== 0) slot = (slot + 1) & mask;
    slots[slot] = i + 1;
  }
  return { patterns: text, starts, slots };
}

/** The buffers of packed data, to transfer with `postMessage`. */
export function packedBuffers(data: PackedIndexData): ArrayBuffer[] {
  return [data.starts.buffer as ArrayBuffer, data.slots.buffer as ArrayBuffer];
}

/**
 * Packed patterns matched by specificity, with exactly the precedence of
 * `HostIndex.match`: the exact key (with its port), then the host
 * without its port, then the longest wildcard suffix above the host
 * (`*.example.org` matches `a.example.org`, not `example.org`; an IPv6
 * literal matches no wildcard). A lookup hashes the key once and each
 * suffix of the host after a dot once, probing a table at most half full,
 * and allocates nothing; wrapping the data costs nothing either.
 */
export class PackedIndex {
  #text: string;
  #starts: Uint32Array;
  #slots: Int32Array;
  #mask: number;
  #wildcards: boolean;

  /** Wraps packed data (see {@linkcode packPatterns}); copies nothing. */
  constructor(data: PackedIndexData) {
    this.#text = data.patterns;
    this.#starts = data.starts;
    this.#slots = data.slots;
    this.#mask = data.slots.length - 1;
    this.#wildcards = data.patterns.startsWith("*.") || data.patterns.includes("\n*.");
  }

  /** The number of patterns. */
  get size(): number {
    return this.#starts.length - 1;
  }

  /** The pattern at an index. */
  pattern(index: number): string {
    return this.#text.slice(this.#starts[index], this.#starts[index + 1] - 1);
  }

  /** The index of the most specific pattern matching a host key, or -1. */
  match(key: string): number {
    const colon = key.lastIndexOf(":");
    const end = colon > key.lastIndexOf("]") ? colon : key.length;
    // No exact pattern starts with `*.`: such a key can match wildcards only.
    if (key.charCodeAt(0) !== STAR || key.charCodeAt(1) !== DOT) {
      // One pass hashes the key and, at the port's colon, the host.
      const hostHash = hashRange(BASIS, key, 0, end);
      let found = end < key.length
        ? this.#find(hashRange(hostHash, key, end, key.length), key, 0, key.length, false)
        : -1;
      if (found < 0) found = this.#find(hostHash, key, 0, end, false);
      if (found >= 0) return found;
    }
    if (!this.#wildcards || key.charCodeAt(0) === 91 /* [ */) return -1;
    // The deepest wildcard above the host first: `*.b.c` before `*.c` for `a.b.c`.
    for (let dot = key.indexOf("."); dot >= 0 && dot < end; dot = key.indexOf(".", dot + 1)) {
      const hash = hashRange(STAR_DOT, key, dot + 1, end);
      const wildcard = this.#find(hash, key, dot + 1, end, true);
      if (wildcard >= 0) return wildcard;
    }
    return -1;
  }

  /**
   * The index of the pattern `key.slice(from, to)`, prefixed with `*.` when
   * `star`, whose hash is `hash`; -1 when there is none.
   */
  #find(hash: number, key: string, from: number, to: number, star: boolean): number {
    const text = this.#text;
    const length = to - from + (star ? 2 : 0);
    for (let slot = hash & this.#mask;; slot = (slot + 1) & this.#mask) {
      const entry = this.#slots[slot];
      if (entry === 0) return -1;
      let at = this.#starts[entry - 1];
      if (this.#starts[entry] - 1 - at !== length) continue;
      if (star) {
        if (text.charCodeAt(at) !== STAR || text.charCodeAt(at + 1) !== DOT) continue;
        at += 2;
      }
      let i = from;
      while (i < to && text.charCodeAt(at) === key.charCodeAt(i)) i++, at++;
      if (i === to) return entry - 1;
    }
  }
}
