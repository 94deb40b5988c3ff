/**
 * The access flags of the command line, from raw flag and environment
 * strings to {@linkcode ClientPolicyOptions} and
 * {@linkcode DestinationPolicyOptions}.
 *
 * @module
 */

import { ClientPolicy, type ClientPolicyOptions } from "./client_policy.ts";
import type { DestinationPolicyOptions } from "./destination_policy.ts";
import { parseDestinationRule } from "./destination_rule.ts";
import { parseHtpasswd, parseUsers } from "./proxy_auth.ts";

/** Raw values as given; a flag wins over its environment variable. */
export interface AccessFlagValues {
  /** `--allow-clients` / `DPRL_ALLOW_CLIENTS`: comma-separated CIDRs. */
  allowClients?: string;
  /** `DPRL_AUTH`: `user:password` pairs, comma-separated. */
  auth?: string;
  /** `--auth-file` / `DPRL_AUTH_FILE`: an htpasswd file of bcrypt hashes. */
  authFile?: string;
  /** `--allow` (repeatable) or `DPRL_ALLOW` split on commas. */
  allow?: string[];
  /** `--deny` (repeatable) or `DPRL_DENY` split on commas. */
  deny?: string[];
  /** `--deny-private` (`true`) or `DPRL_DENY_PRIVATE` (`true`/`false`, `1`/`0`, `yes`/`no`). */
  denyPrivate?: boolean | string;
}

/** Options for both policies. */
export interface AccessOptions {
  /** Who may use the proxy. */
  clients: ClientPolicyOptions;
  /** Where it may connect. */
  destinations: DestinationPolicyOptions;
}

/** Splits a comma-separated environment value into its non-empty entries. */
export function splitList(text: string | undefined): string[] {
  return (text ?? "").split(",").map((s) => s.trim()).filter(Boolean);
}

/**
 * A switch given as a flag (`true`) or an environment value: `1`, `true`,
 * `yes`, `on` or `0`, `false`, `no`, `off`, empty. Throws a `RangeError`
 * naming `name` on anything else.
 */
export function parseSwitch(name: string, value: boolean | string | undefined): boolean {
  if (typeof value === "boolean" || value === undefined) return value ?? false;
  const v = value.trim().toLowerCase();
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["", "0", "false", "no", "off"].includes(v)) return false;
  throw new RangeError(`${name} must be true or false, got "${value}"`);
}

function readAuthFile(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
      throw new RangeError(`--auth-file ${path} cannot be read: run with --allow-read=${path}`);
    }
    const reason = err instanceof Deno.errors.NotFound ? "no such file" : (err as Error).message;
    throw new RangeError(`--auth-file ${path} cannot be read: ${reason}`);
  }
}

/**
 * Turns the raw values into policy options, reading the auth file. Throws a
 * `RangeError` with a one-line message (never holding a password) on any bad
 * value: the command line prints it and exits with code 2.
 */
export function parseAccessFlags(values: AccessFlagValues): AccessOptions {
  const users = parseUsers(values.auth ?? "");
  if (values.authFile) {
    const path = values.authFile;
    for (const [user, hash] of parseHtpasswd(readAuthFile(path), path)) {
      if (users.has(user)) {
        throw new RangeError(`User "${user}" is in both DPRL_AUTH and --auth-file`);
      }
      users.set(user, hash);
    }
  }
  const clients: ClientPolicyOptions = { users };
  if (values.allowClients !== undefined && values.allowClients.trim() !== "") {
    clients.allowClients = splitList(values.allowClients);
  }
  new ClientPolicy(clients); // rejects a bad CIDR with a one-line message
  return {
    clients,
    destinations: {
      allow: rules("--allow", values.allow),
      deny: rules("--deny", values.deny),
      denyPrivate: parseSwitch("--deny-private", values.denyPrivate),
    },
  };
}

/** The rules of a repeatable flag, each entry split on commas and checked. */
function rules(name: string, values: string[] | undefined): string[] {
  const list = (values ?? []).flatMap(splitList);
  for (const rule of list) {
    try {
      parseDestinationRule(rule);
    } catch (err) {
      throw new RangeError(`${name}: ${(err as Error).message}`);
    }
  }
  return list;
}
