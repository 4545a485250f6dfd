// @ts-check
/**
 * topk-service from Node.js (≥ 18.19, no dependencies): `TopKClient` for every route, `TopKError`
 * for every refusal, the dense-row helpers and the OIP binary framing.
 * @module
 */

export { TopKClient } from "./client.js";
export { denseJvp, denseValues, scatter, withDense } from "./dense.js";
export { TopKError, parseRetryAfter } from "./errors.js";
export { HEADER_LENGTH, datatypeOf, decodeResponse, encodeRequest } from "./oip.js";
