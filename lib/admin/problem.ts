/**
 * The admin server's errors: RFC 9457 `application/problem+json` answers.
 *
 * @module
 */

const TITLES: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  422: "Unprocessable Content",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/**
 * An answer that is a problem: thrown by an endpoint, answered by the
 * handler with {@linkcode Problem.response}.
 *
 * @example
 * ```ts
 * import { Problem } from "./problem.ts";
 * const res = new Problem(404, "No endpoint at /x").response();
 * // 404, {"type":"about:blank","title":"Not Found","status":404,"detail":"No endpoint at /x"}
 * ```
 */
export class Problem extends Error {
  /** The HTTP status. */
  readonly status: number;
  /** Header fields sent with the answer, such as `Allow`. */
  readonly headers: Record<string, string>;

  /** A problem with `status` and a one-line `detail` (the message). */
  constructor(status: number, detail: string, headers: Record<string, string> = {}) {
    super(detail);
    this.name = "Problem";
    this.status = status;
    this.headers = headers;
  }

  /** The problem as a response. */
  response(): Response {
    const { status, message: detail } = this;
    const body = { type: "about:blank", title: TITLES[status] ?? "Error", status, detail };
    return new Response(JSON.stringify(body), {
      status,
      headers: {
        ...this.headers,
        "content-type": "application/problem+json",
        "cache-control": "no-store",
      },
    });
  }
}

/**
 * Input the admin API refuses (400): a bad host, limit, query parameter or
 * body. Only the handler's own checks throw it, so that a `TypeError` from a
 * bug stays a 500.
 *
 * @example
 * ```ts
 * import { InvalidInput } from "./problem.ts";
 * const error = new InvalidInput("limit must be a non-negative integer, got -1");
 * error.response().status; // 400
 * ```
 */
export class InvalidInput extends Problem {
  /** Bad input described in one line. */
  constructor(detail: string) {
    super(400, detail);
    this.name = "InvalidInput";
  }
}
