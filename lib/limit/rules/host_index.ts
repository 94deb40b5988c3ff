/**
 * A map from host patterns to values, matched by specificity in O(labels).
 *
 * @module
 */

/** A node of the wildcard trie: one label, read from the right. */
interface Node<T> {
  value: T | undefined;
  children: Map<string, Node<T>> | undefined;
}

/**
 * Values keyed by normalised host patterns: exact keys (`api.example.com`,
 * `cdn.example.net:8443`) and wildcards (`*.example.org`).
 *
 * {@linkcode HostIndex.match} finds the most specific pattern for a host key:
 * the exact key (with its port), then the host without its port, then the
 * longest wildcard suffix. Exact patterns live in a map; wildcards in a
 * trie of labels read from the right (`org`, then `example`), so a lookup
 * costs at most two map accesses for the exact patterns and one per label of
 * the host for the wildcards, and a host under no wildcard's top-level
 * label is done after one; however many patterns the index holds.
 */
export class HostIndex<T> {
  #exact = new Map<string, T>();
  #root: Node<T> = { value: undefined, children: undefined };
  #wildcards = 0;

  /** The number of patterns. */
  get size(): number {
    return this.#exact.size + this.#wildcards;
  }

  /** Sets the value of a normalised pattern (see `parseHostPattern`). */
  set(pattern: string, value: T): void {
    if (!pattern.startsWith("*.")) {
      this.#exact.set(pattern, value);
      return;
    }
    let node = this.#root;
    for (const label of pattern.slice(2).split(".").reverse()) {
      node.children ??= new Map();
      let child = node.children.get(label);
      if (!child) node.children.set(label, child = { value: undefined, children: undefined });
      node = child;
    }
    if (node.value === undefined) this.#wildcards++;
    node.value = value;
  }

  /** Removes a normalised pattern. */
  delete(pattern: string): void {
    if (!pattern.startsWith("*.")) {
      this.#exact.delete(pattern);
      return;
    }
    const path = [this.#root];
    const labels = pattern.slice(2).split(".").reverse();
    for (const label of labels) {
      const child = path[path.length - 1].children?.get(label);
      if (!child) return;
      path.push(child);
    }
    if (path[path.length - 1].value === undefined) return;
    this.#wildcards--;
    path[path.length - 1].value = undefined;
    // Prune the nodes that lead nowhere any more.
    for (let i = labels.length; i > 0; i--) {
      const node = path[i];
      if (node.value !== undefined || node.children?.size) break;
      path[i - 1].children!.delete(labels[i - 1]);
    }
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
    if (this.#wildcards === 0 || host.startsWith("[")) return undefined;
    // Walk the labels from the right; the deepest wildcard above the host wins.
    let node: Node<T> | undefined = this.#root;
    let end = host.length;
    while (end > 0) {
      const dot = host.lastIndexOf(".", end - 1);
      node = node.children?.get(host.slice(dot + 1, end));
      if (node === undefined || dot < 0) break;
      if (node.value !== undefined) value = node.value;
      end = dot;
    }
    return value;
  }
}
