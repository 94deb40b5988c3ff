/**
 * 4 KiB buffers that were used and are free again: a request's head read, a
 * response's head and small body. Taking one costs a pop; allocating a
 * typed array costs more than the copy it serves.
 *
 * @module
 */

/** The size of every spare buffer. */
export const SPARE_SIZE = 4096;
/** Spare buffers kept at most (256 KiB). */
const SPARE_MAX = 64;
const spare: Uint8Array<ArrayBuffer>[] = [];

/** A free 4 KiB buffer: a spare one, else a new one. */
export function takeSpare(): Uint8Array<ArrayBuffer> {
  return spare.pop() ?? new Uint8Array(SPARE_SIZE);
}

/**
 * Gives back `buf`, a 4 KiB buffer (another size is not kept): nobody may
 * read or write it afterwards, not even through a view.
 */
export function giveSpare(buf: Uint8Array<ArrayBuffer>): void {
  if (buf.length === SPARE_SIZE && spare.length < SPARE_MAX) spare.push(buf);
}
