// @ts-check
/**
 * `TopKClient`: every route of topk-service behind one small class over the global `fetch`
 * (no dependencies), answers as plain objects (the `/v1` JSON) or typed arrays (OIP binary).
 * @module
 */

import { withDense } from "./dense.js";
import { TopKError, errorOf } from "./errors.js";
import { HEADER_LENGTH, decodeResponse, encodeRequest } from "./oip.js";

/**
 * Options every call takes.
 * @typedef {object} CallOptions
 * @property {number} [requestTimeoutMs] Sent as `X-Request-Timeout-Ms`: the server drops the
 *   request (504) if it is still queued after this long.
 * @property {AbortSignal} [signal] Aborts the call (the client's own timeout applies as well).
 */

/**
 * @typedef {CallOptions & {
 *   operator?: "sparse" | "soft" | "hard",
 *   output?: "mask" | "values" | "magnitude",
 *   epsilon?: number | number[],
 *   p?: number,
 *   solver?: "auto" | "threshold" | "pav" | "dykstra",
 *   tangent?: number[][],
 *   cotangent?: number[][],
 *   dense?: boolean,
 * }} TopKOptions `dense: true` adds each row's dense output (and dense JVP) to the answer.
 */

/**
 * @typedef {object} TopKResponse
 * @property {string} operator
 * @property {string} output
 * @property {import("./dense.js").TopKRow[]} rows
 */

/**
 * @typedef {CallOptions & {
 *   epsilon?: number | number[],
 *   descending?: boolean,
 *   regularization?: "l2" | "kl",
 *   tangent?: number[][],
 *   cotangent?: number[][],
 * }} SoftSortOptions
 */

/**
 * @typedef {CallOptions & {
 *   increasing?: boolean,
 *   solver?: "pav" | "dykstra",
 *   tangent?: number[][],
 *   cotangent?: number[][],
 * }} IsotonicOptions
 */

/**
 * One row of a dense answer (`/v1/sort`, `/v1/rank`, `/v1/isotonic`).
 * @typedef {object} DenseRow
 * @property {number[]} values
 * @property {number[]} [jvp]
 * @property {number[]} [vjp]
 * @property {number} n
 */

/**
 * @typedef {object} DenseResponse
 * @property {string} operator
 * @property {DenseRow[]} rows
 */

/**
 * @typedef {object} OperatorsResponse
 * @property {{name: string, route: string, outputs: string[], parameters: object[], derivatives: string[], description: string}[]} operators
 * @property {{max_rows: number, max_n: number, max_k: number, max_body_bytes: number, max_batch_rows: number} & Record<string, number>} limits
 */

/**
 * @typedef {CallOptions & {
 *   operator?: "sparse" | "soft" | "hard",
 *   output?: "mask" | "values" | "magnitude",
 *   epsilon?: number | Float32Array,
 *   p?: number,
 *   solver?: "auto" | "threshold" | "pav" | "dykstra",
 *   tangent?: Float32Array | Float64Array,
 *   cotangent?: Float32Array | Float64Array,
 *   outputs?: ("values" | "indices" | "jvp" | "vjp")[],
 *   id?: string,
 * }} InferTopKOptions
 */

/**
 * Options of the OIP `sort`, `rank` and `isotonic` models (each takes its own parameters: see
 * `GET /v1/operators`).
 * @typedef {CallOptions & {
 *   epsilon?: number | Float32Array,
 *   descending?: boolean,
 *   regularization?: "l2" | "kl",
 *   increasing?: boolean,
 *   solver?: "pav" | "dykstra",
 *   tangent?: Float32Array | Float64Array,
 *   cotangent?: Float32Array | Float64Array,
 *   outputs?: ("values" | "jvp" | "vjp")[],
 *   id?: string,
 * }} InferDenseOptions
 */

/**
 * The tensors of an OIP `sort`, `rank` or `isotonic` answer (row-major, `[rows, n]`).
 * @typedef {object} DenseTensors
 * @property {[number, number]} shape
 * @property {Float32Array} [values]
 * @property {Float32Array} [jvp]
 * @property {Float32Array} [vjp]
 */

/**
 * The dense tensors of an OIP top-k answer (row-major).
 * @typedef {object} TopKTensors
 * @property {[number, number]} shape `[rows, n]` of `values`, `jvp` and `vjp`.
 * @property {Float32Array} [values] The output at every entry (zero off the support).
 * @property {Int32Array} [indices] Each row's support in descending output order, `-1`-padded
 *   to the widest support (`indicesWidth` entries per row).
 * @property {number} [indicesWidth]
 * @property {Float32Array} [jvp]
 * @property {Float32Array} [vjp]
 */

/**
 * `fields` without its undefined entries (the server refuses a `null`, and absent means default).
 * @param {Record<string, unknown>} fields
 * @returns {Record<string, unknown>}
 */
function defined(fields) {
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
}

export class TopKClient {
  /** @type {string} */
  #base;
  /** @type {number} */
  #timeoutMs;
  /** @type {Record<string, string>} */
  #headers;
  /** @type {typeof fetch} */
  #fetch;

  /**
   * @param {string} baseUrl e.g. `http://127.0.0.1:8000`
   * @param {{timeoutMs?: number, headers?: Record<string, string>, fetch?: typeof fetch}} [options]
   *   `timeoutMs`: the whole call, 30 s by default; `headers`: sent with every request.
   */
  constructor(baseUrl, options = {}) {
    this.#base = baseUrl.replace(/\/+$/, "");
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#headers = options.headers ?? {};
    this.#fetch = options.fetch ?? globalThis.fetch;
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {{body?: Uint8Array | string, headers?: Record<string, string>} & CallOptions} [options]
   * @returns {Promise<Response>} a 2xx response (any other status throws `TopKError`)
   */
  async #send(method, path, options = {}) {
    /** @type {Record<string, string>} */
    const headers = { ...this.#headers, ...options.headers };
    if (options.requestTimeoutMs !== undefined) {
      headers["x-request-timeout-ms"] = String(options.requestTimeoutMs);
    }
    const timeout = AbortSignal.timeout(this.#timeoutMs);
    const signal = options.signal ? anySignal([options.signal, timeout]) : timeout;
    const response = await this.#fetch(this.#base + path, {
      method,
      headers,
      body: /** @type {BodyInit | undefined} */ (options.body),
      signal,
    });
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /**
   * POST a JSON body, parse the JSON answer.
   * @param {string} path
   * @param {Record<string, unknown>} fields
   * @param {CallOptions} options
   */
  async #postJson(path, fields, options) {
    const response = await this.#send("POST", path, {
      body: JSON.stringify(defined(fields)),
      headers: { "content-type": "application/json" },
      requestTimeoutMs: options.requestTimeoutMs,
      signal: options.signal,
    });
    return response.json();
  }

  /**
   * `POST /v1/topk`: top-k of each row of `x` (rows may differ in length), sparse rows.
   * @param {number[][]} x
   * @param {number | number[]} k One k for every row, or one per row.
   * @param {TopKOptions} [options]
   * @returns {Promise<TopKResponse>}
   */
  async topk(x, k, options = {}) {
    const { operator, output, epsilon, p, solver, tangent, cotangent } = options;
    const fields = { x, k, operator, output, epsilon, p, solver, tangent, cotangent };
    /** @type {TopKResponse} */
    const answer = await this.#postJson("/v1/topk", fields, options);
    if (options.dense) answer.rows = answer.rows.map(withDense);
    return answer;
  }

  /**
   * `POST /v1/sort`: soft sort of each row.
   * @param {number[][]} x
   * @param {SoftSortOptions} [options]
   * @returns {Promise<DenseResponse>}
   */
  sort(x, options = {}) {
    return this.#postJson("/v1/sort", softSortFields(x, options), options);
  }

  /**
   * `POST /v1/rank`: soft ranks of each row (1 = smallest, or largest with `descending`).
   * @param {number[][]} x
   * @param {SoftSortOptions} [options]
   * @returns {Promise<DenseResponse>}
   */
  rank(x, options = {}) {
    return this.#postJson("/v1/rank", softSortFields(x, options), options);
  }

  /**
   * `POST /v1/isotonic`: isotonic regression of each row (non-increasing unless `increasing`).
   * @param {number[][]} x
   * @param {IsotonicOptions} [options]
   * @returns {Promise<DenseResponse>}
   */
  isotonic(x, options = {}) {
    const { increasing, solver, tangent, cotangent } = options;
    return this.#postJson("/v1/isotonic", { x, increasing, solver, tangent, cotangent }, options);
  }

  /**
   * `GET /v1/operators`: operators, their parameters and the server's limits.
   * @returns {Promise<OperatorsResponse>}
   */
  async operators() {
    return (await this.#send("GET", "/v1/operators")).json();
  }

  /**
   * Whether `GET /readyz` answers 200 (warm and not draining); 503 is `false`.
   * @returns {Promise<boolean>}
   */
  async ready() {
    try {
      await this.#send("GET", "/readyz");
      return true;
    } catch (error) {
      if (error instanceof TopKError && error.status === 503) return false;
      throw error;
    }
  }

  /**
   * Whether `GET /healthz` answers 200 (the process is alive).
   * @returns {Promise<boolean>}
   */
  async live() {
    await this.#send("GET", "/healthz");
    return true;
  }

  /**
   * Poll `/readyz` until it is 200, for at most `timeoutMs` (connection errors count as not yet).
   * @param {{timeoutMs?: number, intervalMs?: number}} [options]
   * @returns {Promise<void>}
   */
  async waitUntilReady({ timeoutMs = 300_000, intervalMs = 500 } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        if (await this.ready()) return;
      } catch (error) {
        // fetch's network error (TypeError) or a probe that timed out: not up yet
        if (!(error instanceof TypeError) && !(error instanceof Error && error.name === "TimeoutError")) {
          throw error;
        }
      }
      if (Date.now() > deadline) throw new Error(`${this.#base} not ready after ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  }

  /**
   * `POST /v2/models/{model}/infer` with binary tensors in and out.
   * @param {string} model e.g. `topk`
   * @param {import("./oip.js").InputTensor[]} inputs
   * @param {CallOptions & {parameters?: Record<string, string | number | boolean>, outputs?: string[], id?: string}} [options]
   * @returns {Promise<import("./oip.js").InferResult>}
   */
  async infer(model, inputs, options = {}) {
    const { body, headers } = encodeRequest(inputs, options);
    const response = await this.#send("POST", `/v2/models/${encodeURIComponent(model)}/infer`, {
      body,
      headers,
      requestTimeoutMs: options.requestTimeoutMs,
      signal: options.signal,
    });
    const bytes = new Uint8Array(await response.arrayBuffer());
    return decodeResponse(bytes, response.headers.get(HEADER_LENGTH));
  }

  /**
   * Soft sort, soft ranks or isotonic regression of each row of a `[rows, n]` matrix through the
   * OIP binary path (models `sort`, `rank`, `isotonic`): no JSON numbers either way.
   * @param {"sort" | "rank" | "isotonic"} model
   * @param {Float32Array | Float64Array} x Row-major.
   * @param {[number, number]} shape `[rows, n]`.
   * @param {InferDenseOptions} [options]
   * @returns {Promise<DenseTensors>}
   */
  async inferDense(model, x, shape, options = {}) {
    const [rows] = shape;
    /** @type {import("./oip.js").InputTensor[]} */
    const inputs = [{ name: "x", shape, data: x }];
    /** @type {Record<string, string | number | boolean>} */
    const parameters = /** @type {any} */ (
      defined({
        descending: options.descending,
        regularization: options.regularization,
        increasing: options.increasing,
        solver: options.solver,
      })
    );
    if (typeof options.epsilon === "number") parameters.epsilon = options.epsilon;
    else if (options.epsilon !== undefined) inputs.push({ name: "epsilon", shape: [rows], data: options.epsilon });
    if (options.tangent !== undefined) inputs.push({ name: "tangent", shape, data: options.tangent });
    if (options.cotangent !== undefined) inputs.push({ name: "cotangent", shape, data: options.cotangent });
    const result = await this.infer(model, inputs, {
      parameters,
      outputs: options.outputs,
      id: options.id,
      requestTimeoutMs: options.requestTimeoutMs,
      signal: options.signal,
    });
    /** @type {DenseTensors} */
    const tensors = { shape: [shape[0], shape[1]] };
    for (const [name, output] of Object.entries(result.outputs)) {
      if (name === "values" || name === "jvp" || name === "vjp") {
        tensors[name] = /** @type {Float32Array} */ (output.data);
      }
    }
    return tensors;
  }

  /**
   * Top-k of each row of a dense `[rows, n]` matrix through the OIP binary path: the fastest way
   * to send large inputs (no JSON numbers either way).
   * @param {Float32Array | Float64Array} x Row-major scores.
   * @param {[number, number]} shape `[rows, n]`.
   * @param {number | Int32Array} k One k, or one per row.
   * @param {InferTopKOptions} [options]
   * @returns {Promise<TopKTensors>}
   */
  async inferTopK(x, shape, k, options = {}) {
    const [rows] = shape;
    /** @type {import("./oip.js").InputTensor[]} */
    const inputs = [{ name: "x", shape, data: x }];
    /** @type {Record<string, string | number | boolean>} */
    const parameters = /** @type {any} */ (
      defined({ operator: options.operator, output: options.output, p: options.p, solver: options.solver })
    );
    if (typeof k === "number") parameters.k = k;
    else inputs.push({ name: "k", shape: [rows], data: k });
    if (typeof options.epsilon === "number") parameters.epsilon = options.epsilon;
    else if (options.epsilon !== undefined) inputs.push({ name: "epsilon", shape: [rows], data: options.epsilon });
    if (options.tangent !== undefined) inputs.push({ name: "tangent", shape, data: options.tangent });
    if (options.cotangent !== undefined) inputs.push({ name: "cotangent", shape, data: options.cotangent });
    const result = await this.infer("topk", inputs, {
      parameters,
      outputs: options.outputs,
      id: options.id,
      requestTimeoutMs: options.requestTimeoutMs,
      signal: options.signal,
    });
    /** @type {TopKTensors} */
    const tensors = { shape: [shape[0], shape[1]] };
    for (const [name, output] of Object.entries(result.outputs)) {
      if (name === "indices") {
        tensors.indices = /** @type {Int32Array} */ (output.data);
        tensors.indicesWidth = output.shape[1];
      } else if (name === "values" || name === "jvp" || name === "vjp") {
        tensors[name] = /** @type {Float32Array} */ (output.data);
      }
    }
    return tensors;
  }
}

/**
 * @param {number[][]} x
 * @param {SoftSortOptions} options
 */
function softSortFields(x, options) {
  const { epsilon, descending, regularization, tangent, cotangent } = options;
  return { x, epsilon, descending, regularization, tangent, cotangent };
}

/**
 * A signal that aborts when any of `signals` does (`AbortSignal.any` is Node ≥ 20.3 only).
 * @param {AbortSignal[]} signals
 * @returns {AbortSignal}
 */
function anySignal(signals) {
  const controller = new AbortController();
  for (const signal of signals) {
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}
