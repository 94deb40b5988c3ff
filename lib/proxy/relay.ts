/**
 * The two-way relay that a CONNECT tunnel or a switched protocol (a 101
 * answer to an upgrade) becomes: raw bytes both ways until both sides have
 * ended.
 *
 * An idle relay may wait for hours, thousands of them at once, so while a
 * direction idles it holds one small buffer and one pending read with a
 * callback, and no async frame of its own: frames, their registers and the
 * promise chains between them were half of an idle tunnel's heap
 * (bench/README.md, "Where an idle tunnel's memory goes"). Only while bytes
 * flow does a direction run as an async loop, on large buffers that take
 * turns so that the next read overlaps the last write ({@linkcode relay}).
 *
 * @module
 */
import { BufferedReader, type Reader, writeAll, type Writer } from "./buffered_reader.ts";
import type { Session } from "./session.ts";
import type { Upstream } from "./upstream.ts";

/** The buffer of an idle direction; a full read of it means bytes stream. */
const SMALL = 512;
/** The buffer a streaming direction starts with. */
const STREAM_SIZE = 64 * 1024;
/** The largest of the buffers that take turns (two per direction). */
const TURNS_MAX = 256 * 1024;
/**
 * The one buffer of a direction that keeps filling 256 KiB ones, while the
 * budget allows; one that keeps filling this one too grows to the largest.
 */
const LARGE_SIZE = 1024 * 1024;
/** The largest buffer of a direction. */
const LARGEST_SIZE = 4 * 1024 * 1024;

/** Bytes that the relays of a process may hold in large buffers at once. */
export class BufferBudget {
  #left: number;

  /** A budget of `bytes`. */
  constructor(bytes: number) {
    this.#left = bytes;
  }

  /** Bytes not taken. */
  get left(): number {
    return this.#left;
  }

  /** Takes `n` bytes when that many are left; whether it did. */
  take(n: number): boolean {
    if (n > this.#left) return false;
    this.#left -= n;
    return true;
  }

  /** Gives back `n` bytes taken. */
  give(n: number): void {
    this.#left += n;
  }
}

/**
 * The process's budget of large buffers: 64 MiB, 16 streaming directions at
 * 4 MiB or 64 at 1 MiB; the others stream on 256 KiB ones.
 */
const LARGE_BUFFERS = new BufferBudget(64 * 1024 * 1024);

/** What a {@linkcode OneWay} calls when it stops: exactly one of the two, once. */
interface OneWayEnds {
  /** `src` ended and every byte reached `dst`. */
  ended: () => void;
  /** A read or a write failed. */
  failed: (err: unknown) => void;
}

/** One direction of a relay: copies `src` to `dst` until `src` ends. */
class OneWay {
  readonly #src: Reader;
  readonly #dst: Writer;
  readonly #touch: () => void;
  readonly #ends: OneWayEnds;
  readonly #budget: BufferBudget;
  /** The idle buffer, made when first read into. */
  #small: Uint8Array | null = null;

  constructor(src: Reader, dst: Writer, ends: OneWayEnds, options: RelayOptions = {}) {
    this.#src = src;
    this.#dst = dst;
    this.#ends = ends;
    this.#touch = options.touch ?? (() => {});
    this.#budget = options.budget ?? LARGE_BUFFERS;
  }

  /**
   * Waits for the next bytes, with a callback (no frame kept): on the small
   * buffer, or, when the source's read buffer holds bytes or has a read on
   * its way (a client watched while its slot or dial was awaited), there.
   */
  idle(): void {
    const src = this.#src;
    try {
      // One callback a pending read, made for it: an idle direction holds no other.
      if (src instanceof BufferedReader && (src.buffered > 0 || src.reading)) {
        const got = src.buffered > 0 ? Promise.resolve(src.buffered) : src.fill();
        got.then((n) => this.#fromBuffer(src, n), this.#ends.failed);
        return;
      }
      const small = this.#small ??= new Uint8Array(SMALL);
      src.read(small).then(
        (n) => this.#relay(n === null ? null : small.subarray(0, n)),
        this.#ends.failed,
      );
    } catch (err) {
      this.#ends.failed(err);
    }
  }

  /** Relays what the source's read buffer holds: a view, written out before it is read again. */
  #fromBuffer(src: BufferedReader, n: number | null): void {
    this.#relay(n === null && src.buffered === 0 ? null : src.takeUpTo(src.buffered));
  }

  /** Streams from the `first` bytes on, then idles again or ends; `null`: the source ended. */
  #relay(first: Uint8Array | null): void {
    if (first === null) return this.#ends.ended();
    this.#stream(first).then((more) => more ? this.idle() : this.#ends.ended(), this.#ends.failed);
  }

  /**
   * Relays the `first` bytes read, then goes on while reads keep filling
   * the buffer. Resolves `true` once the stream calms down (a read shorter
   * than the small buffer, written out), `false` when `src` ended.
   */
  async #stream(first: Uint8Array): Promise<boolean> {
    this.#touch();
    await writeAll(this.#dst, first);
    if (first.length < SMALL) return true;
    let buf = new Uint8Array(STREAM_SIZE);
    let spare: Uint8Array<ArrayBuffer> | null = null;
    let writing: Promise<void> = Promise.resolve();
    let held = 0; // bytes taken from the budget
    try {
      for (;;) {
        const n = await this.#src.read(buf);
        if (n === null) {
          await writing;
          return false;
        }
        this.#touch();
        await writing;
        writing = writeAll(this.#dst, buf.subarray(0, n));
        // A failed write surfaces at the next await of `writing`.
        writing.catch(() => {});
        if (n < SMALL) {
          await writing;
          return true;
        }
        const full = n === buf.length;
        if (held > 0) {
          // One large buffer, no spare: its write ends before the next read.
          await writing;
          if (full && held < LARGEST_SIZE && this.#budget.take(LARGEST_SIZE - held)) {
            held = LARGEST_SIZE;
            buf = new Uint8Array(LARGEST_SIZE);
          }
        } else if (full && buf.length < TURNS_MAX) {
          // Full reads: grow, and let the old buffer finish its write.
          spare = null;
          buf = new Uint8Array(buf.length * 4);
        } else if (full && this.#budget.take(LARGE_SIZE)) {
          held = LARGE_SIZE;
          spare = null;
          buf = new Uint8Array(LARGE_SIZE);
        } else {
          [buf, spare] = [spare ?? new Uint8Array(buf.length), buf];
        }
      }
    } finally {
      if (held > 0) this.#budget.give(held);
    }
  }
}

/** Options of {@linkcode relay}. */
export interface RelayOptions {
  /** Called whenever bytes arrive (the idle timeout starts again). */
  touch?: () => void;
  /** Where large buffers come from; the process's own by default. */
  budget?: BufferBudget;
}

/**
 * Copies `src` to `dst` until `src` ends: resolves once every byte is
 * written, rejects when a read or a write fails. While `src` idles, the
 * relay holds a 512-byte buffer and a pending read; while it streams, two
 * buffers of 64 KiB, then 256 KiB, take turns, and a direction that keeps
 * filling those gets one of 1 MiB, then 4 MiB, from the budget when the
 * budget has it.
 */
export function relay(src: Reader, dst: Writer, options?: RelayOptions): Promise<void> {
  return new Promise((ended, failed) => new OneWay(src, dst, { ended, failed }, options).idle());
}

/**
 * Takes the connection over: pipes both ways until both sides have ended,
 * then closes both and ends the session (`engine.ended`); returns at once,
 * and nothing of its caller's waits for it (an idle pipe holds no async
 * frame). The end of one direction is passed on as a half-close while the
 * other flows, under the fin timeout; a failure either way closes both.
 * Bytes already buffered on either side go first. The client's bytes follow
 * once `upward` resolves (the request body relay has ended: only one reader
 * of the client at a time); a rejection closes both.
 */
export function pipe(s: Session, up: Upstream, upward?: Promise<void>): void {
  s.pipeTakesOver();
  let flowing = 2;
  let stopped = 0;
  const stop = () => {
    if (++stopped !== 2) return; // exactly once
    s.close();
    s.engine.ended(s);
  };
  const closeBoth = () => {
    s.close();
    stop();
  };
  const endsInto = (dst: { closeWrite(): Promise<void> }): OneWayEnds => ({
    ended: () => {
      if (--flowing === 0) return closeBoth();
      // The other side gets the fin timeout to finish.
      s.until("fin");
      dst.closeWrite().then(stop, closeBoth);
    },
    failed: closeBoth,
  });
  const options = { touch: s.touch };
  const upwards = new OneWay(s.reader, s.toUpstream, endsInto(up.conn), options);
  if (upward) upward.then(() => upwards.idle(), closeBoth);
  else upwards.idle();
  new OneWay(up.reader, s, endsInto(s.conn), options).idle();
}
