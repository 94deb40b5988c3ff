/**
 * {@linkcode proxyPolicies}: who may use a proxy and where it may go, from
 * its options and the address it listens on.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { ProxyRateLimiterOptions } from "../proxy_options.ts";
import { ClientPolicy } from "./client_policy.ts";
import { DestinationPolicy } from "./destination_policy.ts";
import { redisNodes } from "./fleet_guard.ts";
import { parseParentUrl } from "../proxy/parent_url.ts";

/** The policies of one proxy. */
export interface ProxyPolicies {
  /** Who may use the proxy. */
  clients: ClientPolicy;
  /** Where it may go. */
  destinations: DestinationPolicy;
}

/**
 * The client and destination policies of a proxy listening on `addr`: never
 * a loop through the proxy itself, never a path to its Redis; throws a
 * `RangeError` when a parent proxy is one of them. Warns about a
 * port open beyond this machine.
 */
export async function proxyPolicies(
  o: ProxyRateLimiterOptions,
  addr: Deno.NetAddr,
  logger: Logger,
): Promise<ProxyPolicies> {
  const clients = new ClientPolicy({
    allowClients: o.allowClients,
    users: o.users && new Map(Object.entries(o.users)),
  });
  const destinations = new DestinationPolicy({
    allow: o.allow,
    deny: o.deny,
    denyPrivate: o.denyPrivate,
    resolveTimeout: o.timeouts?.connect,
  });
  // Never a loop through the proxy itself, never a path to its counters.
  await destinations.protect(addr.hostname, addr.port);
  for (const node of redisNodes(o.redis)) await destinations.protect(node.host, node.port);
  for (const text of o.upstreamProxy ?? []) {
    const parent = parseParentUrl(text);
    if (await destinations.protects(parent.hostname, parent.port)) {
      throw new RangeError(
        `Parent proxy ${parent.origin} is this proxy or its Redis: traffic would go round in a loop`,
      );
    }
  }
  const warning = clients.exposureWarning(addr.hostname);
  if (warning) logger.warn(warning);
  if ((addr.hostname === "0.0.0.0" || addr.hostname === "::") && !destinations.interfacesVisible) {
    logger.warn(
      "Cannot see this machine's network addresses: a CONNECT to this proxy's port on one of " +
        "them is not known to be a loop; run with --allow-sys=networkInterfaces",
    );
  }
  return { clients, destinations };
}
