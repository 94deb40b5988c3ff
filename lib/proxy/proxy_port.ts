/**
 * {@linkcode ProxyPort}: the bound proxy port, plain TCP or TLS, its URL,
 * and the reload of its TLS certificate and key.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { type ClientListener, tcpClients } from "./client_conn.ts";
import { TlsListener, type TlsPem } from "./tls_listener.ts";
import type { RuleDifference } from "../limit/rules/diff.ts";

/** Where the proxy port's TLS comes from: the PEM text, or a function that reads it (again on each reload). */
export type TlsSource = TlsPem | (() => TlsPem | Promise<TlsPem>);

/** Options of {@linkcode ProxyPort.open}. */
export interface ProxyPortOptions {
  /** Address to bind. */
  hostname: string;
  /** Port to bind; 0 picks a free one. */
  port: number;
  /** TLS on the port; plain TCP without. */
  tls?: TlsSource;
  /** Longest time a TLS handshake may take, in ms. */
  handshakeTimeout: number;
  /** A TLS handshake failed (logged at debug by the port). */
  onHandshakeFailure?: () => void;
  /** Client caps that TLS connections count against from their first byte (0: none). */
  maxClients?: number;
  /** The same per client address. */
  maxClientsPerIp?: number;
  /** Where reloads and handshake failures are logged. */
  logger: Logger;
}

/**
 * What a reload of the port's TLS did: a change of certificate is listed as
 * rule `tls`, from the SHA-256 of the old certificate chain's PEM (its first
 * 16 hex digits) to the new one's.
 */
export type TlsReload = { ok: true; changes: RuleDifference[] } | { ok: false; error: string };

/** The proxy port. */
export class ProxyPort {
  /** Accepts the clients. */
  readonly listener: ClientListener;
  /** The proxy's URL (`http:` or `https:`), with a loopback address for a wildcard bind. */
  readonly url: URL;
  #tls: TlsListener | null;
  #source: TlsSource | undefined;
  #logger: Logger;
  /** The digest of the certificate chain served. */
  #served = "";

  private constructor(
    listener: ClientListener,
    tls: { listener: TlsListener; served: string } | null,
    options: ProxyPortOptions,
  ) {
    this.listener = listener;
    this.#tls = tls?.listener ?? null;
    this.#served = tls?.served ?? "";
    this.#source = options.tls;
    this.#logger = options.logger;
    this.url = proxyUrl(listener.addr, tls !== null);
  }

  /** Binds the port. Throws a `TypeError` on a TLS certificate and key that are not a usable pair. */
  static async open(options: ProxyPortOptions): Promise<ProxyPort> {
    const { hostname, port, logger } = options;
    if (options.tls === undefined) {
      return new ProxyPort(tcpClients(Deno.listen({ hostname, port })), null, options);
    }
    const pem = await readPem(options.tls);
    const tls = await TlsListener.listen({
      hostname,
      port,
      pem,
      handshakeTimeout: options.handshakeTimeout,
      maxClients: options.maxClients,
      maxClientsPerIp: options.maxClientsPerIp,
      onHandshakeFailure: (err) => {
        logger.debug("TLS handshake failed: {error}", { error: err.message });
        options.onHandshakeFailure?.();
      },
    });
    return new ProxyPort(tls, { listener: tls, served: await digest(pem.cert) }, options);
  }

  /** Whether {@linkcode reloadTls} reads anything: the TLS source is a function. */
  get reloadable(): boolean {
    return typeof this.#source === "function";
  }

  /**
   * Reads the certificate and key again and serves them to new handshakes;
   * a pair that cannot be read or used keeps the one served, with one log line.
   */
  async reloadTls(): Promise<TlsReload> {
    if (this.#tls === null || typeof this.#source !== "function") return { ok: true, changes: [] };
    try {
      const pem = await readPem(this.#source);
      this.#tls.setPem(pem);
      const [a, b] = [this.#served, this.#served = await digest(pem.cert)];
      return { ok: true, changes: a === b ? [] : [{ rule: "tls", a, b }] };
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      this.#logger.error("TLS certificate not reloaded, the one served stays: {error}", { error });
      return { ok: false, error };
    }
  }
}

/** One outcome of a reload of the rules and of the port's TLS: both changes, or both errors. */
export function joinReloads(rules: TlsReload, tls: TlsReload | null): TlsReload {
  if (tls === null) return rules;
  if (rules.ok && tls.ok) return { ok: true, changes: [...rules.changes, ...tls.changes] };
  if (rules.ok) return tls;
  return tls.ok ? rules : { ok: false, error: `${rules.error}; ${tls.error}` };
}

async function readPem(source: TlsSource): Promise<TlsPem> {
  return typeof source === "function" ? await source() : source;
}

/** The first 16 hex digits of the SHA-256 of `text`. */
async function digest(text: string): Promise<string> {
  const hash = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)),
  );
  return Array.from(hash.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The proxy URL of a bound address. */
function proxyUrl(addr: Deno.NetAddr, tls: boolean): URL {
  const host = addr.hostname === "::"
    ? "[::1]"
    : addr.hostname.includes(":")
    ? `[${addr.hostname}]`
    : addr.hostname === "0.0.0.0"
    ? "127.0.0.1"
    : addr.hostname;
  return new URL(`${tls ? "https" : "http"}://${host}:${addr.port}/`);
}
