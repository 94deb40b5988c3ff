/**
 * A plain-HTTP upstream that records when each request came (ms since
 * epoch), answering 200, or a scripted first answer; and one request
 * through a proxy with `fetch`.
 */

/** A running recording upstream. */
export interface RecordingUpstream extends AsyncDisposable {
  /** When each request came, in ms since epoch. */
  seen: number[];
  /** Its `host:port`. */
  authority: string;
  /** Its URL, path `/`. */
  url: string;
}

/** Starts the upstream; its first answer is `first` when given, every other one 200. */
export function startRecordingUpstream(
  first?: { status: number; retryAfter: string },
): RecordingUpstream {
  const seen: number[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    seen.push(Date.now());
    if (first && seen.length === 1) {
      return new Response("busy\n", {
        status: first.status,
        headers: { "retry-after": first.retryAfter },
      });
    }
    return new Response("ok\n");
  });
  const { port } = server.addr as Deno.NetAddr;
  return {
    seen,
    authority: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}/`,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

/** One GET of `url` through the proxy at `proxyUrl`, its body dropped. */
export async function getVia(proxyUrl: string, url: string): Promise<Response> {
  const client = Deno.createHttpClient({ proxy: { url: proxyUrl } });
  try {
    const res = await fetch(url, { client });
    await res.body?.cancel();
    return res;
  } finally {
    client.close();
  }
}
