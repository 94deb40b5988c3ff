/**
 * Buffers that were used and are free again, in two sizes: 4 KiB ones (a
 * request's head read, a response's head and small body) and 512-byte ones
 * (what an idle connection waits with). Taking one costs a pop; allocating
 * a typed array costs more than the copy it serves.
 *
 * @module
 */

/** The size of the larger spare buffers. */
export const SPARE_SIZE = 4096;
/** The size of the smaller ones, the read buffer of a connection that waits. */
export const SMALL_SIZE = 512;
/** Spare buffers kept at most, of each size (256 KiB and 32 KiB). */
const SPARE_MAX = 64;
const spare: Uint8Array<ArrayBuffer>[] = [];
const small: Uint8Array<ArrayBuffer>[] = [];

/** A free buffer of `size` ({@linkcode SPARE_SIZE} or {@linkcode SMALL_SIZE}): a spare one, else a new one. */
export function takeSpare(
  size: typeof SPARE_SIZE | typeof SMALL_SIZE = SPARE_SIZE,
): Uint8Array<ArrayBuffer> {
  return (size === SMALL_SIZE ? small : spare).pop() ?? new Uint8Array(size);
}

/**
 * Gives back `buf` (a buffer of another size than the two is not kept):
 * nobody may read or write it afterwards, not even through a view.
 */
export function giveSpare(buf: Uint8Array<ArrayBuffer>): void {
  const kept = buf.length === SPARE_SIZE ? spare : buf.length === SMALL_SIZE ? small : null;
  if (kept && kept.length < SPARE_MAX) kept.push(buf);
}
