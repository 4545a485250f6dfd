// @ts-check
/** The binary framing on its own (no server): byte layout out, typed arrays back. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { HEADER_LENGTH, datatypeOf, decodeResponse, encodeRequest } from "../src/index.js";

/**
 * A response body as the server frames it: JSON header, then each binary output's bytes.
 * @param {object} header
 * @param {Uint8Array[]} blobs
 */
function frame(header, blobs) {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const body = new Uint8Array(json.length + blobs.reduce((t, b) => t + b.length, 0));
  body.set(json);
  let offset = json.length;
  for (const blob of blobs) {
    body.set(blob, offset);
    offset += blob.length;
  }
  return { body, headerLength: String(json.length) };
}

describe("encodeRequest", () => {
  it("writes the JSON header, then each input's little-endian bytes, and the header length", () => {
    const x = Float32Array.from([1.5, -2, 3.25, 0]);
    const k = Int32Array.from([1, 2]);
    const { body, headers } = encodeRequest(
      [
        { name: "x", shape: [2, 2], data: x },
        { name: "k", shape: [2], data: k },
      ],
      { parameters: { operator: "hard" }, outputs: ["values"], id: "a" },
    );
    const length = Number(headers[HEADER_LENGTH]);
    assert.equal(headers["content-type"], "application/octet-stream");
    const header = JSON.parse(new TextDecoder().decode(body.subarray(0, length)));
    assert.deepEqual(header, {
      id: "a",
      parameters: { operator: "hard", binary_data_output: true },
      inputs: [
        { name: "x", shape: [2, 2], datatype: "FP32", parameters: { binary_data_size: 16 } },
        { name: "k", shape: [2], datatype: "INT32", parameters: { binary_data_size: 8 } },
      ],
      outputs: [{ name: "values", parameters: { binary_data: true } }],
    });
    assert.equal(body.length, length + 24);
    const view = new DataView(body.buffer, body.byteOffset + length);
    assert.deepEqual(
      [0, 1, 2, 3].map((i) => view.getFloat32(4 * i, true)),
      [1.5, -2, 3.25, 0],
    );
    assert.deepEqual([view.getInt32(16, true), view.getInt32(20, true)], [1, 2]);
  });

  it("sends a view of a subarray's own bytes, not its whole buffer", () => {
    const whole = Float32Array.from([9, 1, 2, 9]);
    const { body, headers } = encodeRequest([{ name: "x", shape: [1, 2], data: whole.subarray(1, 3) }]);
    const length = Number(headers[HEADER_LENGTH]);
    assert.deepEqual(Array.from(new Float32Array(body.slice(length).buffer)), [1, 2]);
  });

  it("refuses data that does not fill its shape, and untyped data", () => {
    assert.throws(() => encodeRequest([{ name: "x", shape: [2, 2], data: Float32Array.from([1]) }]), RangeError);
    assert.throws(() => datatypeOf(/** @type {any} */ ([1, 2])), TypeError);
    assert.equal(datatypeOf(new BigInt64Array(1)), "INT64");
  });
});

describe("decodeResponse", () => {
  it("reads binary outputs at unaligned offsets and JSON outputs alike", () => {
    const values = Float32Array.from([0.25, 0, 0.75]);
    const indices = Int32Array.from([2, 0, -1]);
    const header = {
      model_name: "topk",
      model_version: "1",
      id: "x", // odd lengths put the blobs at unaligned offsets
      outputs: [
        { name: "values", datatype: "FP32", shape: [1, 3], parameters: { binary_data_size: 12 } },
        { name: "indices", datatype: "INT32", shape: [1, 3], parameters: { binary_data_size: 12 } },
        { name: "jvp", datatype: "FP32", shape: [1, 3], data: [1, 2, 3] },
        { name: "big", datatype: "INT64", shape: [1], data: [5] },
      ],
    };
    const { body, headerLength } = frame(header, [
      new Uint8Array(values.buffer),
      new Uint8Array(indices.buffer),
    ]);
    const result = decodeResponse(body, headerLength);
    assert.equal(result.modelName, "topk");
    assert.equal(result.id, "x");
    assert.deepEqual(Object.keys(result.outputs), ["values", "indices", "jvp", "big"]);
    assert.ok(result.outputs.values.data instanceof Float32Array);
    assert.deepEqual(Array.from(result.outputs.values.data, Number), [0.25, 0, 0.75]);
    assert.ok(result.outputs.indices.data instanceof Int32Array);
    assert.deepEqual(Array.from(result.outputs.indices.data, Number), [2, 0, -1]);
    assert.ok(result.outputs.jvp.data instanceof Float32Array);
    assert.deepEqual(Array.from(/** @type {BigInt64Array} */ (result.outputs.big.data)), [5n]);
  });

  it("reads a plain JSON answer (no header length)", () => {
    const json = JSON.stringify({
      model_name: "topk",
      model_version: "1",
      outputs: [{ name: "values", datatype: "FP32", shape: [2, 2], data: [[1, 0], [0, 1]] }],
    });
    const result = decodeResponse(new TextEncoder().encode(json), null);
    assert.deepEqual(Array.from(result.outputs.values.data, Number), [1, 0, 0, 1]);
  });

  it("refuses framing that does not add up", () => {
    const header = {
      model_name: "topk",
      model_version: "1",
      outputs: [{ name: "values", datatype: "FP32", shape: [1, 2], parameters: { binary_data_size: 8 } }],
    };
    const short = frame(header, [new Uint8Array(4)]);
    assert.throws(() => decodeResponse(short.body, short.headerLength), RangeError);
    const long = frame(header, [new Uint8Array(12)]);
    assert.throws(() => decodeResponse(long.body, long.headerLength), /belong to no output/);
    assert.throws(() => decodeResponse(long.body, "0"), RangeError);
    const wrongShape = frame({ ...header, outputs: [{ ...header.outputs[0], shape: [1, 3] }] }, [new Uint8Array(8)]);
    assert.throws(() => decodeResponse(wrongShape.body, wrongShape.headerLength), /elements for shape/);
  });
});
