// @ts-check
/**
 * The one error every refused or failed request raises: the HTTP status, the server's summary
 * (`error`), the fields it names (`errors[]`) and when to retry (`Retry-After`), so a caller can
 * tell a mistake in its request (4xx, do not retry) from an overload (503, retry later or
 * elsewhere) without parsing messages.
 * @module
 */

/**
 * @typedef {object} FieldError
 * @property {string} field  Where the request is wrong, e.g. `x[2][5]`, `k`, `inputs[0].datatype`.
 * @property {string} reason Why.
 */

export class TopKError extends Error {
  /**
   * @param {number} status HTTP status.
   * @param {string} summary The server's `error` summary (or the body's text when it is not JSON).
   * @param {FieldError[]} errors The server's `errors[]` (empty when it sent none).
   * @param {number | null} retryAfter Seconds to wait before retrying (`Retry-After`), if sent.
   */
  constructor(status, summary, errors, retryAfter) {
    super(`HTTP ${status}: ${summary}`);
    this.name = "TopKError";
    /** @type {number} */
    this.status = status;
    /** @type {string} */
    this.error = summary;
    /** @type {FieldError[]} */
    this.errors = errors;
    /** @type {number | null} */
    this.retryAfter = retryAfter;
  }

  /** Whether retrying the same request later (or on another replica) may succeed. */
  get retryable() {
    return this.status === 503 || this.status === 429 || this.status === 504;
  }
}

/**
 * `Retry-After` in seconds: either delta-seconds or an HTTP date (RFC 9110 §10.2.3).
 * @param {string | null} header
 * @param {number} [now] Milliseconds since the epoch (for tests).
 * @returns {number | null}
 */
export function parseRetryAfter(header, now = Date.now()) {
  if (header === null || header.trim() === "") return null;
  const text = header.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const date = Date.parse(text);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - now) / 1000));
}

/**
 * The error a non-2xx response stands for.
 * @param {Response} response
 * @returns {Promise<TopKError>}
 */
export async function errorOf(response) {
  const text = await response.text();
  let summary = text || response.statusText || "no body";
  /** @type {FieldError[]} */
  let errors = [];
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") {
      summary = body.error;
      if (Array.isArray(body.errors)) errors = body.errors;
    } else if (body && typeof body.detail === "string") {
      summary = body.detail; // a route the server does not have (e.g. `{"detail": "Not Found"}`)
    }
  } catch {
    // not JSON: keep the text
  }
  return new TopKError(
    response.status,
    summary,
    errors,
    parseRetryAfter(response.headers.get("retry-after")),
  );
}
