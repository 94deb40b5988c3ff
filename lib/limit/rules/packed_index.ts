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
   * An open-addressing hash table of the patterns (a power-of-two number of
   * slots, at least twice the number of patterns, linear probing): slot `s`
   * is `slots[3 * s]`, a pattern's index plus one (0 when empty), then that
   * pattern's hash and its start in `patterns`, so that a probe reads no
   * other array and a pattern only when its hash is the one sought.
   */
  slots: Int32Array;
}

/** FNV-1a's offset basis, as a signed 32-bit integer (as the slots hold hashes). */
const BASIS = 0x811c9dc5 | 0;
/** FNV-1a's prime. */
const PRIME = 0x01000193;
/** The code units of `*` and `.`. */
const STAR = 42;
const DOT = 46;
/** The code unit of the newline between patterns. */
const NEWLINE = 10;

/**
 * The hash of `text.slice(from, to)`: FNV-1a over its UTF-16 code units from
 * the last to the first. Read backwards, the hash of a host's suffix comes
 * before the host's, so one pass over a host hashes it and, at each dot,
 * the wildcard `*.` + the suffix after the dot.
 */
function hashRange(text: string, from: number, to: number): number {
  let hash = BASIS;
  for (let i = to - 1; i >= from; i--) hash = Math.imul(hash ^ text.charCodeAt(i), PRIME);
  return hash;
}

/** The wildcard candidates of the lookup under way: their hashes and dots, in pairs. */
let candidates = new Int32Array(64);

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
  const slots = new Int32Array(3 * size);
  const mask = size - 1;
  for (let i = 0; i < n; i++) {
    const hash = hashRange(text, starts[i], starts[i + 1] - 1);
    let slot = hash & mask;
    while (slots[3 * slot] !== 0) slot = (slot + 1) & mask;
    slots[3 * slot] = i + 1;
    slots[3 * slot + 1] = hash;
    slots[3 * slot + 2] = starts[i];
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
    this.#mask = data.slots.length / 3 - 1;
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
    const exact = key.charCodeAt(0) !== STAR || key.charCodeAt(1) !== DOT;
    if (exact && end < key.length) {
      const found = this.#find(hashRange(key, 0, key.length), key, 0, key.length, false);
      if (found >= 0) return found;
    }
    // One pass over the host, from the right, hashes it and its wildcards.
    const wild = this.#wildcards && key.charCodeAt(0) !== 91; // An IPv6 `[…]` has none.
    let hash = BASIS;
    let count = 0;
    for (let i = end - 1; i >= 0; i--) {
      const code = key.charCodeAt(i);
      if (code === DOT && wild) {
        if (2 * count === candidates.length) {
          const more = new Int32Array(2 * candidates.length);
          more.set(candidates);
          candidates = more;
        }
        candidates[2 * count] = Math.imul(Math.imul(hash ^ DOT, PRIME) ^ STAR, PRIME);
        candidates[2 * count++ + 1] = i;
      }
      hash = Math.imul(hash ^ code, PRIME);
    }
    if (exact) {
      const found = this.#find(hash, key, 0, end, false);
      if (found >= 0) return found;
    }
    // The deepest wildcard above the host first (`*.b.c` before `*.c` for
    // `a.b.c`): the one of the leftmost dot, found last.
    while (count-- > 0) {
      const found = this.#find(
        candidates[2 * count],
        key,
        candidates[2 * count + 1] + 1,
        end,
        true,
      );
      if (found >= 0) return found;
    }
    return -1;
  }

  /**
   * The index of the pattern `key.slice(from, to)`, prefixed with `*.` when
   * `star`, whose hash is `hash`; -1 when there is none.
   */
  #find(hash: number, key: string, from: number, to: number, star: boolean): number {
    const text = this.#text;
    const slots = this.#slots;
    for (let slot = hash & this.#mask;; slot = (slot + 1) & this.#mask) {
      const entry = slots[3 * slot];
      if (entry === 0) return -1;
      if (slots[3 * slot + 1] !== hash) continue;
      let at = slots[3 * slot + 2];
      if (star) {
        if (text.charCodeAt(at) !== STAR || text.charCodeAt(at + 1) !== DOT) continue;
        at += 2;
      }
      let i = from;
      while (i < to && text.charCodeAt(at) === key.charCodeAt(i)) i++, at++;
      // The pattern ends where the key does: at a newline or the end.
      if (i === to && (at === text.length || text.charCodeAt(at) === NEWLINE)) return entry - 1;
    }
  }
}
