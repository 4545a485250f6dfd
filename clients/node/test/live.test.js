// @ts-check
/**
 * Against a live server at `TOPK_BASE_URL` (pytest's tests/clients/test_node_client.py starts one
 * and sets it; skipped without it). Every answer is checked against numbers: hard top-k indices,
 * a float64 oracle of the sparse mask and its finite-difference JVP, PAV for isotonic regression,
 * exact sorts and ranks, and the OIP binary path against `/v1/topk` bit for bit.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { TopKClient, TopKError, denseJvp, denseValues } from "../src/index.js";
import { isotonic, matrix, maxDifference, random, sparseMask } from "./oracle.js";

const BASE = process.env.TOPK_BASE_URL;
const skip = BASE ? false : "TOPK_BASE_URL is not set (pytest tests/clients starts a server)";
const client = new TopKClient(BASE ?? "http://127.0.0.1:1", { timeoutMs: 60_000 });
const P = 4 / 3; // the server's default p
const EPSILON = 0.1; // the server's default epsilon

describe("readiness and operators", { skip }, () => {
  it("is live and ready", async () => {
    assert.equal(await client.live(), true);
    assert.equal(await client.ready(), true);
    await client.waitUntilReady({ timeoutMs: 1000 });
  });

  it("lists every operator family with its route and the limits", async () => {
    const { operators, limits } = await client.operators();
    const routes = Object.fromEntries(operators.map((o) => [o.name, o.route]));
    assert.deepEqual(routes, {
      sparse: "/v1/topk",
      soft: "/v1/topk",
      hard: "/v1/topk",
      sort: "/v1/sort",
      rank: "/v1/rank",
      isotonic: "/v1/isotonic",
    });
    for (const name of ["max_rows", "max_n", "max_k", "max_body_bytes"]) {
      assert.ok(Number.isInteger(limits[name]) && limits[name] > 0, name);
    }
  });
});

describe("POST /v1/topk", { skip }, () => {
  it("hard top-k selects the k largest of each row", async () => {
    const x = [
      [0.3, 2.0, -1.0, 1.9, 0.5],
      [5, 4, 3, 2, 1, 0],
    ];
    const answer = await client.topk(x, [2, 3], { operator: "hard", dense: true });
    assert.equal(answer.operator, "hard");
    assert.deepEqual(
      answer.rows.map((row) => row.indices),
      [
        [1, 3],
        [0, 1, 2],
      ],
    );
    assert.deepEqual(answer.rows[0].dense, [0, 1, 0, 1, 0]);
    assert.deepEqual(answer.rows[1].dense, [1, 1, 1, 0, 0, 0]);
    assert.deepEqual(
      answer.rows.map((row) => [row.n, row.k]),
      [
        [5, 2],
        [6, 3],
      ],
    );
  });

  it("the sparse mask matches a float64 oracle, sums to k and orders its support", async () => {
    const next = random(17);
    const x = [...matrix(next, 2, 12), ...matrix(next, 1, 7)]; // ragged rows
    const ks = [3, 1, 5];
    const answer = await client.topk(x, ks);
    answer.rows.forEach((row, i) => {
      const dense = denseValues(row);
      const expected = sparseMask(x[i], ks[i], EPSILON, P);
      assert.ok(maxDifference(dense, expected) < 2e-5, `row ${i}: ${dense} vs ${expected}`);
      assert.ok(Math.abs(dense.reduce((a, b) => a + b, 0) - ks[i]) < 1e-4);
      const support = expected.flatMap((v, j) => (v > 1e-6 ? [j] : []));
      assert.deepEqual([...row.indices].sort((a, b) => a - b), support);
      for (let j = 1; j < row.values.length; j += 1) assert.ok(row.values[j - 1] >= row.values[j]);
    });
  });

  it("the dense JVP matches central differences of the oracle", async () => {
    const next = random(23);
    const x = matrix(next, 2, 10);
    const tangent = matrix(next, 2, 10, 1);
    const k = 4;
    const epsilon = 0.5; // several entries strictly inside (0, 1)
    const answer = await client.topk(x, k, { epsilon, tangent, dense: true });
    answer.rows.forEach((row, i) => {
      const h = 1e-6;
      const plus = sparseMask(x[i].map((v, j) => v + h * tangent[i][j]), k, epsilon, P);
      const minus = sparseMask(x[i].map((v, j) => v - h * tangent[i][j]), k, epsilon, P);
      const expected = plus.map((v, j) => (v - minus[j]) / (2 * h));
      assert.ok(row.denseJvp !== undefined);
      assert.deepEqual(row.denseJvp, denseJvp(row));
      const scale = Math.max(1, ...expected.map(Math.abs));
      assert.ok(maxDifference(row.denseJvp, expected) < 1e-3 * scale, `${row.denseJvp} vs ${expected}`);
      assert.ok(Math.abs(row.denseJvp.reduce((a, b) => a + b, 0)) < 1e-4); // Σ mask = k is fixed
    });
  });

  it("refuses k > n with a typed 422 naming the field", async () => {
    await assert.rejects(client.topk([[1, 3, 2]], 5), (error) => {
      assert.ok(error instanceof TopKError);
      assert.equal(error.status, 422);
      assert.equal(error.retryable, false);
      assert.equal(error.retryAfter, null);
      assert.deepEqual(
        error.errors.map((e) => e.field),
        ["k"],
      );
      assert.match(error.errors[0].reason, /exceeds the length 3/);
      return true;
    });
  });

  it("refuses more rows than max_rows with a 413 naming x", async () => {
    const { limits } = await client.operators();
    const x = Array.from({ length: limits.max_rows + 1 }, () => [1, 2]);
    await assert.rejects(client.topk(x, 1), (error) => {
      assert.ok(error instanceof TopKError);
      assert.equal(error.status, 413);
      assert.ok(error.errors.some((e) => e.field === "x"), JSON.stringify(error.errors));
      return true;
    });
  });
});

describe("POST /v1/sort, /v1/rank, /v1/isotonic", { skip }, () => {
  const x = [
    [0.5, -1.5, 2.0, 1.0, -0.5],
    [3.0, 1.0, 2.0],
  ];
  const tangent = [
    [1, 0, 0, 0, 0],
    [0, 1, -1],
  ];

  it("soft sort with a small epsilon sorts exactly and keeps each row's sum", async () => {
    const ascending = await client.sort(x, { epsilon: 0.01, tangent });
    assert.equal(ascending.operator, "sort");
    assert.deepEqual(
      ascending.rows.map((row) => row.values),
      x.map((row) => [...row].sort((a, b) => a - b)),
    );
    const descending = await client.sort(x, { epsilon: 0.01, descending: true });
    assert.deepEqual(
      descending.rows.map((row) => row.values),
      x.map((row) => [...row].sort((a, b) => b - a)),
    );
    const smooth = await client.sort(x, { epsilon: 10, tangent });
    smooth.rows.forEach((row, i) => {
      const sum = (/** @type {number[]} */ v) => v.reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(sum(row.values) - sum(x[i])) < 1e-5); // a permutahedron keeps the sum
      assert.ok(row.jvp !== undefined && Math.abs(sum(row.jvp) - sum(tangent[i])) < 1e-5);
    });
  });

  it("soft ranks with a small epsilon are the hard ranks, and always sum to n(n+1)/2", async () => {
    const hard = await client.rank(x, { epsilon: 0.01 });
    assert.deepEqual(
      hard.rows.map((row) => row.values),
      [
        [3, 1, 5, 4, 2],
        [3, 1, 2],
      ],
    );
    const smooth = await client.rank(x, { epsilon: 10, tangent });
    smooth.rows.forEach((row, i) => {
      const n = x[i].length;
      assert.ok(Math.abs(row.values.reduce((a, b) => a + b, 0) - (n * (n + 1)) / 2) < 1e-4);
      assert.ok(row.jvp !== undefined && Math.abs(row.jvp.reduce((a, b) => a + b, 0)) < 1e-5);
    });
  });

  it("isotonic regression and its JVP match pool-adjacent-violators", async () => {
    const next = random(5);
    const y = matrix(next, 3, 11);
    const t = matrix(next, 3, 11, 1);
    for (const increasing of [false, true]) {
      const answer = await client.isotonic(y, { increasing, tangent: t });
      assert.equal(answer.operator, "isotonic");
      answer.rows.forEach((row, i) => {
        const expected = isotonic(y[i], t[i], increasing);
        assert.ok(maxDifference(row.values, expected.fit) < 1e-5, `${row.values} vs ${expected.fit}`);
        assert.ok(row.jvp !== undefined && maxDifference(row.jvp, expected.jvp) < 1e-5);
      });
    }
    const small = await client.isotonic([[1, 3, 2]], { increasing: true });
    assert.deepEqual(small.rows[0].values, [1, 2.5, 2.5]);
  });
});

describe("OIP binary (POST /v2/models/topk/infer)", { skip }, () => {
  const rows = 3;
  const n = 12;
  const next = random(99);
  const x = Float32Array.from(matrix(next, rows, n).flat());
  const tangent = Float32Array.from(matrix(next, rows, n, 1).flat());
  const k = Int32Array.from([1, 4, 12]);
  const asRows = (/** @type {ArrayLike<number>} */ flat) =>
    Array.from({ length: rows }, (_, i) => Array.from(flat).slice(i * n, (i + 1) * n));

  it("agrees with /v1/topk bit for bit, values, support and JVP", async () => {
    const tensors = await client.inferTopK(x, [rows, n], k, { tangent });
    const v1 = await client.topk(asRows(x), Array.from(k), { tangent: asRows(tangent), dense: true });
    assert.deepEqual(tensors.shape, [rows, n]);
    assert.ok(tensors.values instanceof Float32Array && tensors.values.length === rows * n);
    assert.ok(tensors.jvp instanceof Float32Array);
    assert.ok(tensors.indices instanceof Int32Array);
    const width = tensors.indicesWidth ?? 0;
    assert.equal(width, Math.max(...v1.rows.map((row) => row.indices.length)));
    v1.rows.forEach((row, i) => {
      const values = Array.from(tensors.values?.subarray(i * n, (i + 1) * n) ?? []);
      const jvp = Array.from(tensors.jvp?.subarray(i * n, (i + 1) * n) ?? []);
      assert.deepEqual(values, row.dense?.map(Math.fround));
      assert.deepEqual(jvp, row.denseJvp?.map(Math.fround));
      const indices = Array.from(tensors.indices?.subarray(i * width, (i + 1) * width) ?? []);
      assert.deepEqual(indices, [...row.indices, ...new Array(width - row.indices.length).fill(-1)]);
    });
    // and the numbers themselves: the mask of each row sums to its k
    for (let i = 0; i < rows; i += 1) {
      const total = Array.from(tensors.values?.subarray(i * n, (i + 1) * n) ?? []).reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(total - k[i]) < 1e-4, `row ${i}: ${total}`);
    }
  });

  it("hard top-k through the binary path, one k for all rows, only the outputs asked for", async () => {
    const scores = Float32Array.from([0.3, 2.0, -1.0, 1.9, 0.5, 5, 4, 3, 2, 1]);
    const tensors = await client.inferTopK(scores, [2, 5], 2, { operator: "hard", outputs: ["indices"] });
    assert.equal(tensors.values, undefined);
    assert.deepEqual(Array.from(tensors.indices ?? []), [1, 3, 0, 1]);
  });

  it("echoes the request id and reads float64 input", async () => {
    const result = await client.infer(
      "topk",
      [{ name: "x", shape: [1, 4], data: Float64Array.from([4, 1, 3, 2]) }],
      { parameters: { k: 2, operator: "hard" }, id: "request-7" },
    );
    assert.equal(result.id, "request-7");
    assert.equal(result.modelName, "topk");
    assert.deepEqual(Array.from(result.outputs.values.data, Number), [1, 0, 1, 0]);
    assert.deepEqual(result.outputs.values.shape, [1, 4]);
  });

  it("refuses a wrong datatype with a typed 422 whose summary names the field", async () => {
    const request = client.infer("topk", [{ name: "x", shape: [1, 2], data: Int32Array.from([1, 2]) }], {
      parameters: { k: 1 },
    });
    await assert.rejects(request, (error) => {
      assert.ok(error instanceof TopKError);
      assert.equal(error.status, 422);
      assert.match(error.error, /^inputs\[0\]\.datatype: /);
      assert.deepEqual(
        error.errors.map((e) => e.field),
        ["inputs[0].datatype"],
      );
      return true;
    });
  });

  for (const [model, options] of /** @type {const} */ ([
    ["sort", { epsilon: 0.5, regularization: "kl" }],
    ["rank", { descending: true }],
    ["isotonic", { increasing: true }],
  ])) {
    it(`the ${model} model agrees with /v1/${model} bit for bit, values and JVP`, async () => {
      const tensors = await client.inferDense(model, x, [rows, n], { ...options, tangent });
      const v1 = await client[model](asRows(x), { ...options, tangent: asRows(tangent) });
      assert.deepEqual(tensors.shape, [rows, n]);
      assert.ok(tensors.values instanceof Float32Array && tensors.vjp === undefined);
      v1.rows.forEach((row, i) => {
        assert.deepEqual(Array.from(tensors.values?.subarray(i * n, (i + 1) * n) ?? []), row.values.map(Math.fround));
        assert.deepEqual(Array.from(tensors.jvp?.subarray(i * n, (i + 1) * n) ?? []), row.jvp?.map(Math.fround));
      });
    });
  }

  it("an unknown model is a typed 404", async () => {
    const request = client.infer("no-such-model", [{ name: "x", shape: [1, 1], data: Float32Array.from([1]) }]);
    await assert.rejects(request, (error) => error instanceof TopKError && error.status === 404);
  });
});
