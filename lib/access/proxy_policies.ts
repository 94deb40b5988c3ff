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

/** The policies of one proxy. */
export interface ProxyPolicies {
  /** Who may use the proxy. */
  clients: ClientPolicy;
  /** Where it may go. */
  destinations: DestinationPolicy;
}

/**
 * The client and destination policies of a proxy listening on `addr`: never
 * a loop through the proxy itself, never a path to its Redis. Warns about a
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
