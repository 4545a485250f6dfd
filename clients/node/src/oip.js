// @ts-check
/**
 * The Open Inference Protocol's binary tensor data extension (KServe V2 / Triton), as plain
 * functions of bytes: a request is a JSON header followed by each input's raw little-endian
 * tensor, and `Inference-Header-Content-Length` says where the JSON ends; an answer comes back the
 * same way. A 256×1024 float32 input is 1 MiB of bytes instead of ~2.6 MB of JSON numbers that
 * both sides would have to print and parse, which is why large requests take this path.
 * @module
 */

/** @typedef {"FP32" | "FP64" | "INT32" | "INT64"} Datatype */
/** @typedef {Float32Array | Float64Array | Int32Array | BigInt64Array} Tensor */

/**
 * One input tensor: `data` is row-major, of `shape`'s size.
 * @typedef {object} InputTensor
 * @property {string} name
 * @property {number[]} shape
 * @property {Tensor} data
 */

/**
 * One output tensor of an answer.
 * @typedef {object} OutputTensor
 * @property {string} name
 * @property {Datatype} datatype
 * @property {number[]} shape
 * @property {Tensor} data
 */

/**
 * A decoded inference answer.
 * @typedef {object} InferResult
 * @property {string} modelName
 * @property {string} modelVersion
 * @property {string} [id]
 * @property {Record<string, OutputTensor>} outputs By output name, in the answer's order.
 */

/** @type {Record<Datatype, {array: any, size: number}>} */
const DATATYPES = {
  FP32: { array: Float32Array, size: 4 },
  FP64: { array: Float64Array, size: 8 },
  INT32: { array: Int32Array, size: 4 },
  INT64: { array: BigInt64Array, size: 8 },
};

export const HEADER_LENGTH = "inference-header-content-length";

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * The OIP datatype of a typed array.
 * @param {Tensor} data
 * @returns {Datatype}
 */
export function datatypeOf(data) {
  for (const [name, { array }] of Object.entries(DATATYPES)) {
    if (data instanceof array) return /** @type {Datatype} */ (name);
  }
  throw new TypeError("tensor data must be a Float32Array, Float64Array, Int32Array or BigInt64Array");
}

/**
 * The little-endian bytes of a typed array (a view of it on little-endian hosts, a copy otherwise).
 * @param {Tensor} data
 * @returns {Uint8Array}
 */
function littleEndianBytes(data) {
  if (HOST_IS_LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const bytes = new Uint8Array(data.byteLength);
  const view = new DataView(bytes.buffer);
  const size = data.BYTES_PER_ELEMENT;
  for (let i = 0; i < data.length; i += 1) {
    if (data instanceof Float32Array) view.setFloat32(i * size, data[i], true);
    else if (data instanceof Float64Array) view.setFloat64(i * size, data[i], true);
    else if (data instanceof Int32Array) view.setInt32(i * size, data[i], true);
    else view.setBigInt64(i * size, data[i], true);
  }
  return bytes;
}

/**
 * A typed array read from `length` little-endian bytes at `offset` (always a copy, so that it is
 * aligned and outlives the response buffer).
 * @param {Uint8Array} bytes
 * @param {number} offset
 * @param {number} length
 * @param {Datatype} datatype
 * @returns {Tensor}
 */
function tensorFrom(bytes, offset, length, datatype) {
  const { array, size } = DATATYPES[datatype];
  if (length % size !== 0) throw new RangeError(`${length} bytes is not a whole number of ${datatype}`);
  const copy = bytes.slice(offset, offset + length);
  if (HOST_IS_LITTLE_ENDIAN) return new array(copy.buffer, 0, length / size);
  const out = new array(length / size);
  const view = new DataView(copy.buffer);
  for (let i = 0; i < out.length; i += 1) {
    if (datatype === "FP32") out[i] = view.getFloat32(i * size, true);
    else if (datatype === "FP64") out[i] = view.getFloat64(i * size, true);
    else if (datatype === "INT32") out[i] = view.getInt32(i * size, true);
    else out[i] = view.getBigInt64(i * size, true);
  }
  return out;
}

/**
 * The body and headers of a binary inference request: every input as raw bytes, every output
 * asked back as raw bytes.
 * @param {InputTensor[]} inputs
 * @param {{parameters?: Record<string, string | number | boolean>, outputs?: string[], id?: string}} [options]
 * @returns {{body: Uint8Array, headers: Record<string, string>}}
 */
export function encodeRequest(inputs, options = {}) {
  /** @type {Record<string, unknown>} */
  const header = {};
  if (options.id !== undefined) header.id = options.id;
  header.parameters = { ...options.parameters, binary_data_output: true };
  header.inputs = inputs.map(({ name, shape, data }) => {
    const elements = shape.reduce((a, b) => a * b, 1);
    if (elements !== data.length) {
      throw new RangeError(`input ${name}: ${data.length} elements for shape [${shape}]`);
    }
    return {
      name,
      shape,
      datatype: datatypeOf(data),
      parameters: { binary_data_size: data.byteLength },
    };
  });
  if (options.outputs !== undefined) {
    header.outputs = options.outputs.map((name) => ({ name, parameters: { binary_data: true } }));
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const blobs = inputs.map(({ data }) => littleEndianBytes(data));
  const body = new Uint8Array(json.length + blobs.reduce((total, b) => total + b.length, 0));
  body.set(json, 0);
  let offset = json.length;
  for (const blob of blobs) {
    body.set(blob, offset);
    offset += blob.length;
  }
  return {
    body,
    headers: {
      "content-type": "application/octet-stream",
      [HEADER_LENGTH]: String(json.length),
    },
  };
}

/**
 * An inference answer's outputs as typed arrays, whether they came as binary data (after a JSON
 * header of `headerLength` bytes) or as JSON `data`.
 * @param {Uint8Array} bytes The whole response body.
 * @param {string | null} headerLength `Inference-Header-Content-Length`, if the response had one.
 * @returns {InferResult}
 */
export function decodeResponse(bytes, headerLength) {
  const jsonLength = headerLength === null ? bytes.length : Number(headerLength);
  if (!Number.isInteger(jsonLength) || jsonLength <= 0 || jsonLength > bytes.length) {
    throw new RangeError(`${HEADER_LENGTH} ${headerLength} is not within the ${bytes.length}-byte body`);
  }
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(0, jsonLength)));
  let offset = jsonLength;
  /** @type {Record<string, OutputTensor>} */
  const outputs = {};
  for (const output of header.outputs) {
    const datatype = /** @type {Datatype} */ (output.datatype);
    if (!(datatype in DATATYPES)) throw new TypeError(`output ${output.name}: datatype ${datatype}`);
    const size = output.parameters?.binary_data_size;
    /** @type {Tensor} */
    let data;
    if (size !== undefined) {
      if (offset + size > bytes.length) throw new RangeError(`output ${output.name} runs past the body`);
      data = tensorFrom(bytes, offset, size, datatype);
      offset += size;
    } else {
      const flat = /** @type {number[]} */ (output.data.flat(Infinity));
      const { array } = DATATYPES[datatype];
      data = datatype === "INT64" ? BigInt64Array.from(flat, BigInt) : new array(flat);
    }
    const elements = output.shape.reduce((/** @type {number} */ a, /** @type {number} */ b) => a * b, 1);
    if (data.length !== elements) {
      throw new RangeError(`output ${output.name}: ${data.length} elements for shape [${output.shape}]`);
    }
    outputs[output.name] = { name: output.name, datatype, shape: output.shape, data };
  }
  if (offset !== bytes.length) throw new RangeError(`${bytes.length - offset} bytes belong to no output`);
  /** @type {InferResult} */
  const result = { modelName: header.model_name, modelVersion: header.model_version, outputs };
  if (header.id !== undefined) result.id = header.id;
  return result;
}
