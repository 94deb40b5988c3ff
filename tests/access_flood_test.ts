// A flood of wrong Basic credentials through a real proxy with bcrypt users:
// the flooding address gets 503 with Retry-After beyond its share of bcrypt
// checks, and right passwords from other addresses (curl binds 127.0.0.2 and
// 127.0.0.3 as its source) and cached ones from the flooding address pass.
import assert from "node:assert/strict";
import bcrypt from "bcryptjs";
import { header, rawExchange, request, text } from "./_helpers/raw.ts";
import { startProxy, type TestProxy } from "./_helpers/proxy.ts";
import { startUpstream } from "./_helpers/upstream.ts";
import { commandTest } from "./_helpers/command.ts";

/** A check costs tens of milliseconds here: 64 of them waiting take seconds to drain. */
const COST = 8;
const PASSWORDS: Record<string, string> = { bob: "bob's secret", carol: "carol's secret" };
const USERS = Object.fromEntries(
  Object.entries(PASSWORDS).map(([user, password]) => [user, bcrypt.hashSync(password, COST)]),
);

/** What the flood's requests were answered. */
interface Flood {
  /** Answers per status. */
  statuses: Map<number, number>;
  /** 503 answers without a Retry-After of at least one second. */
  without: number;
  /** Failures other than an answer. */
  errors: string[];
  /** Resolves with the first answer. */
  firstAnswer: Promise<void>;
  /** Stops sending and waits for the requests under way. */
  stop(): Promise<void>;
}

/**
 * `clients` loops on one connection after another from 127.0.0.1, each
 * request with new wrong credentials (unknown users and wrong passwords),
 * until stopped or `max` requests in all.
 */
function flood(proxy: TestProxy, url: string, clients: number, max: number): Flood {
  const statuses = new Map<number, number>();
  const errors: string[] = [];
  let without = 0;
  let sent = 0;
  let stopped = false;
  const first = Promise.withResolvers<void>();
  const client = async (c: number) => {
    while (!stopped && sent < max) {
      const n = sent++;
      const user = n % 2 ? "bob" : `mallory${c}`;
      const auth = `Basic ${btoa(`${user}:guess ${n}`)}`;
      try {
        const res = await rawExchange(
          proxy.addr,
          request("GET", url, { Host: new URL(url).host, "Proxy-Authorization": auth }),
        );
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status === 503 && !(Number(header(res.head, "retry-after")) >= 1)) without++;
        first.resolve();
      } catch (err) {
        errors.push(String(err));
      }
    }
  };
  const running = Array.from({ length: clients }, (_, c) => client(c));
  return {
    statuses,
    get without() {
      return without;
    },
    errors,
    firstAnswer: first.promise,
    async stop() {
      stopped = true;
      await Promise.all(running);
    },
  };
}

/** A GET through the proxy by curl from `source`; resolves the status code. */
async function curlFrom(source: string, proxy: TestProxy, user: string, url: string) {
  const { stdout } = await new Deno.Command("curl", {
    args: ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
      .concat(["--interface", source, "--proxy", proxy.url, "--proxy-user", user, url]),
    env: { NO_PROXY: "", no_proxy: "" },
  }).output();
  return text(stdout);
}

commandTest(
  "a flood of wrong credentials gets 503 beyond its share; right passwords still pass",
  { command: "curl", install: "curl" },
  async () => {
    await using up = await startUpstream();
    await using proxy = await startProxy({ users: USERS });
    const url = up.url("/fixed");
    // 12 clients with 8 connections each: more checks at once than the 64 places.
    const f = flood(proxy, url, 12 * 8, 5_000);
    try {
      await f.firstAnswer;
      // First checks from other addresses take their turn instead of a 407.
      assert.equal(await curlFrom("127.0.0.2", proxy, `bob:${PASSWORDS.bob}`, url), "200");
      assert.equal(await curlFrom("127.0.0.3", proxy, `carol:${PASSWORDS.carol}`, url), "200");
      // Checked once, bob's credentials pass from the flooding address too, queued behind nothing.
      const client = Deno.createHttpClient({
        proxy: { url: proxy.url, basicAuth: { username: "bob", password: PASSWORDS.bob } },
      });
      try {
        const res = await fetch(url, { client });
        assert.equal(res.status, 200);
        await res.body?.cancel();
      } finally {
        client.close();
      }
    } finally {
      await f.stop();
    }
    assert.deepEqual(f.errors, []);
    // The flood's own checks say 407 (checked: wrong); beyond its share, 503 with Retry-After.
    assert.deepEqual([...f.statuses.keys()].sort(), [407, 503], JSON.stringify([...f.statuses]));
    assert.equal(f.without, 0);
  },
);
