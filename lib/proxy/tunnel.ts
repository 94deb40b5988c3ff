/**
 * Pipes: the CONNECT tunnel, and the two-way relay that a tunnel or a
 * switched protocol (a 101 answer to an upgrade) becomes.
 *
 * @module
 */
import { writeAll } from "./buffered_reader.ts";
import { pump } from "./body.ts";
import { encodeLatin1, type RequestHead } from "./http_head.ts";
import type { Session } from "./session.ts";
import { parseConnectTarget } from "./target.ts";
import type { Upstream } from "./upstream.ts";

const ESTABLISHED = encodeLatin1("HTTP/1.1 200 Connection Established\r\n\r\n");

/**
 * Opens a CONNECT tunnel within its host's limit and pipes it until both
 * sides have ended. A refusal or a failed dial is answered by
 * {@linkcode Session.fail}.
 */
export async function tunnel(s: Session, req: RequestHead): Promise<void> {
  let up: Upstream;
  try {
    const target = parseConnectTarget(req.target);
    s.begin("connect", "CONNECT", target.key);
    s.watchClient();
    up = await s.engine.pool.open(target.key, target.hostname, target.port, s.signal);
  } catch (err) {
    await s.fail(err);
    return;
  }
  s.upstream = up;
  s.via = up.parent?.url.authority;
  if (s.closed) return up.close();
  s.status = 200;
  s.touch();
  await writeAll(s, ESTABLISHED);
  s.bytesDown = 0; // tunnel bytes only
  await pipe(s, up);
}

/**
 * Pipes both ways until both sides have ended, then closes both. The end
 * of one direction is passed on as a half-close while the other flows, under
 * the fin timeout. Bytes already buffered on either side go first. The
 * client's bytes follow once `upward` resolves (the request body relay has
 * ended: only one reader of the client at a time); a rejection closes both.
 */
export async function pipe(s: Session, up: Upstream, upward = Promise.resolve()): Promise<void> {
  s.phase = "tunnel";
  let open = 2;
  const ended = (dst: { closeWrite(): Promise<void> }) => {
    if (--open === 0) return s.close();
    // The other side gets the fin timeout to finish.
    s.until("fin");
    return dst.closeWrite();
  };
  const fail = () => s.close();
  await Promise.all([
    upward.then(() => pump(s.reader, s.toUpstream, s.touch)).then(() => ended(up.conn))
      .catch(fail),
    pump(up.reader, s, s.touch).then(() => ended(s.conn)).catch(fail),
  ]);
  s.close();
}
