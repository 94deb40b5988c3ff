/**
 * A map from host patterns to values, matched by specificity in O(labels).
 *
 * @module
 */

/**
 * Values keyed by normalised host patterns: exact keys (`api.example.com`,
 * `cdn.example.net:8443`) and wildcards (`*.example.org`).
 *
 * {@linkcode HostIndex.match} finds the most specific pattern for a host key:
 * the exact key (with its port), then the host without its port, then the
 * longest wildcard suffix. It costs one map look-up per label of the host,
 * however many patterns the index holds.
 */
export class HostIndex<T> {
  #exact = new Map<string, T>();
  #wild = new Map<string, T>();

  /** The number of patterns. */
  get size(): number {
    return this.#exact.size + this.#wild.size;
  }

  /** Sets the value of a normalised pattern (see `parseHostPattern`). */
  set(pattern: string, value: T): void {
    if (pattern.startsWith("*.")) this.#wild.set(pattern.slice(2), value);
    else this.#exact.set(pattern, value);
  }

  /** Removes a normalised pattern. */
  delete(pattern: string): void {
    if (pattern.startsWith("*.")) this.#wild.delete(pattern.slice(2));
    else this.#exact.delete(pattern);
  }

  /** The value of exactly this normalised pattern. */
  get(pattern: string): T | undefined {
    return pattern.startsWith("*.") ? this.#wild.get(pattern.slice(2)) : this.#exact.get(pattern);
  }

  /** The value of the most specific pattern matching a host key. */
  match(key: string): T | undefined {
    let value = this.#exact.get(key);
    if (value !== undefined) return value;
    let host = key;
    const colon = key.lastIndexOf(":");
    if (colon > key.lastIndexOf("]")) {
      host = key.slice(0, colon);
      value = this.#exact.get(host);
      if (value !== undefined) return value;
    }
    if (this.#wild.size === 0 || host.startsWith("[")) return undefined;
    for (let dot = host.indexOf("."); dot >= 0; dot = host.indexOf(".", dot + 1)) {
      value = this.#wild.get(host.slice(dot + 1));
      if (value !== undefined) return value;
    }
    return undefined;
  }
}
