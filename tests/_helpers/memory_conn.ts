/**
 * An in-memory stand-in for a `Deno.Conn`, for running the HTTP layer
 * without sockets: reads hand out given pieces one at a time, writes are
 * collected.
 *
 * @module
 */

/** Options of {@linkcode memoryConn}. */
export interface MemoryConnOptions {
  /**
   * What a read past the last piece does: `"eof"` (the default) returns
   * `null`; `"throw"` throws, for proving that nothing waits for more.
   */
  end?: "eof" | "throw";
}

/** The reading and writing side of an in-memory connection. */
export interface MemoryConn {
  /** The object to hand to code that wants a `Deno.Conn`. */
  conn: Deno.Conn;
  /** Everything written so far, in one array. */
  written(): Uint8Array;
  /** How many reads were served. */
  reads(): number;
}

/** A read past the last piece of a `"throw"` connection. */
export class ReadPastEndError extends Error {
  constructor() {
    super("Read past the last piece");
    this.name = "ReadPastEndError";
  }
}

/** Creates a connection whose reads return `pieces` in turn. */
export function memoryConn(
  pieces: Uint8Array[],
  options: MemoryConnOptions = {},
): MemoryConn {
  const queue = pieces.map((p) => p.slice());
  const out: Uint8Array[] = [];
  let reads = 0;
  const conn = {
    read(p: Uint8Array): Promise<number | null> {
      reads++;
      while (queue.length > 0 && queue[0].length === 0) queue.shift();
      const next = queue[0];
      if (!next) {
        if (options.end === "throw") return Promise.reject(new ReadPastEndError());
        return Promise.resolve(null);
      }
      const n = Math.min(p.length, next.length);
      p.set(next.subarray(0, n));
      queue[0] = next.subarray(n);
      return Promise.resolve(n);
    },
    write(p: Uint8Array): Promise<number> {
      out.push(p.slice());
      return Promise.resolve(p.length);
    },
    close(): void {},
  };
  return {
    conn: conn as unknown as Deno.Conn,
    written() {
      let size = 0;
      for (const p of out) size += p.length;
      const all = new Uint8Array(size);
      let off = 0;
      for (const p of out) {
        all.set(p, off);
        off += p.length;
      }
      return all;
    },
    reads: () => reads,
  };
}

/** Bytes of a Latin-1 string (each character one byte). */
export function latin1Bytes(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

/** A Latin-1 string of bytes. */
export function latin1Text(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return s;
}

/** `bytes` cut into pieces of `size` bytes (the last may be shorter). */
export function pieces(bytes: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}
