// @ts-check
/**
 * How refusals surface, against a stub HTTP server on 127.0.0.1 (no topk-service needed): an
 * overloaded server's 503 and Retry-After, a validation body, a non-JSON body, a network error.
 */

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, it } from "node:test";

import { TopKClient, TopKError, parseRetryAfter } from "../src/index.js";

/** @type {import("node:http").Server} */
let server;
/** @type {TopKClient} */
let client;
/** @type {{method?: string, url?: string, headers: import("node:http").IncomingHttpHeaders, body: string}[]} */
const seen = [];

before(async () => {
  server = createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      seen.push({ method: request.method, url: request.url, headers: request.headers, body });
      if (request.url === "/v1/topk") {
        response.writeHead(503, { "content-type": "application/json", "retry-after": "3" });
        response.end(JSON.stringify({ error: "queue full", errors: [{ field: "body", reason: "1024 queued" }] }));
      } else if (request.url === "/v1/sort") {
        response.writeHead(422, { "content-type": "application/json" });
        response.end(JSON.stringify({ error: "invalid request", errors: [{ field: "x[0][1]", reason: "not a number" }] }));
      } else if (request.url === "/readyz") {
        response.writeHead(503, { "content-type": "application/json", "retry-after": "1" });
        response.end(JSON.stringify({ ready: false, state: "warming" }));
      } else {
        response.writeHead(502, { "content-type": "text/plain" });
        response.end("bad gateway");
      }
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const address = server.address();
  assert.ok(address && typeof address === "object");
  client = new TopKClient(`http://127.0.0.1:${address.port}/`, { headers: { authorization: "Bearer t" } });
});

after(() => new Promise((resolve) => server.close(() => resolve(undefined))));

describe("TopKError", () => {
  it("carries a 503's status, summary, fields and Retry-After", async () => {
    await assert.rejects(client.topk([[1, 2]], 1, { requestTimeoutMs: 250 }), (error) => {
      assert.ok(error instanceof TopKError);
      assert.equal(error.status, 503);
      assert.equal(error.error, "queue full");
      assert.deepEqual(error.errors, [{ field: "body", reason: "1024 queued" }]);
      assert.equal(error.retryAfter, 3);
      assert.equal(error.retryable, true);
      assert.equal(error.message, "HTTP 503: queue full");
      return true;
    });
    const sent = seen.find((request) => request.url === "/v1/topk");
    assert.ok(sent);
    assert.equal(sent.method, "POST");
    assert.equal(sent.headers["content-type"], "application/json");
    assert.equal(sent.headers["x-request-timeout-ms"], "250");
    assert.equal(sent.headers.authorization, "Bearer t");
    assert.deepEqual(JSON.parse(sent.body), { x: [[1, 2]], k: 1 }); // no undefined fields sent
  });

  it("carries a 422's field list", async () => {
    await assert.rejects(client.sort([[1, 2]], { descending: true }), (error) => {
      assert.ok(error instanceof TopKError);
      assert.equal(error.status, 422);
      assert.equal(error.retryAfter, null);
      assert.deepEqual(error.errors, [{ field: "x[0][1]", reason: "not a number" }]);
      return true;
    });
    assert.deepEqual(JSON.parse(seen[seen.length - 1].body), { x: [[1, 2]], descending: true });
  });

  it("keeps a non-JSON body's text as the summary", async () => {
    await assert.rejects(client.operators(), (error) => {
      assert.ok(error instanceof TopKError);
      assert.equal(error.status, 502);
      assert.equal(error.error, "bad gateway");
      assert.deepEqual(error.errors, []);
      return true;
    });
  });

  it("reads 503 on /readyz as not ready, and times out waiting", async () => {
    assert.equal(await client.ready(), false);
    await assert.rejects(client.waitUntilReady({ timeoutMs: 50, intervalMs: 10 }), /not ready after 50 ms/);
  });

  it("lets a network error through as fetch's TypeError", async () => {
    const closed = new TopKClient("http://127.0.0.1:1");
    await assert.rejects(closed.operators(), TypeError);
  });
});

describe("parseRetryAfter", () => {
  it("reads delta-seconds and HTTP dates", () => {
    const now = Date.parse("2026-01-01T00:00:00Z");
    assert.equal(parseRetryAfter("7", now), 7);
    assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:05 GMT", now), 5);
    assert.equal(parseRetryAfter("Wed, 31 Dec 2025 23:00:00 GMT", now), 0);
    assert.equal(parseRetryAfter(null, now), null);
    assert.equal(parseRetryAfter("soon", now), null);
  });
});
