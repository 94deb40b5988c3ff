/**
 * The CONNECT tunnel: a slot and a dial within the host's limit, the 200
 * answer, then the two-way relay (relay.ts).
 *
 * @module
 */
import { writeAll } from "./buffered_reader.ts";
import { encodeLatin1, type RequestHead } from "./http_head.ts";
import { pipe } from "./relay.ts";
import type { Session } from "./session.ts";
import { parseConnectTarget } from "./target.ts";
import type { Upstream } from "./upstream.ts";

const ESTABLISHED = encodeLatin1("HTTP/1.1 200 Connection Established\r\n\r\n");

/**
 * Opens a CONNECT tunnel within its host's limit and hands the connection
 * to a pipe ({@linkcode pipe}); resolves once the pipe runs, or once a
 * refusal or a failed dial has been answered by {@linkcode Session.fail}.
 * Never rejects. Nothing of this call (the request head included) is held
 * while the tunnel lasts.
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
  try {
    await writeAll(s, ESTABLISHED);
  } catch {
    return s.close(); // the client is gone
  }
  s.bytesDown = 0; // tunnel bytes only
  pipe(s, up);
}
