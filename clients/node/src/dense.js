// @ts-check
/**
 * `POST /v1/topk` answers each row in sparse form (its support `indices` and the output there),
 * which is what a router or a pruner needs and is small on the wire. These helpers expand a row
 * back to its `n` entries when a caller wants the dense vector.
 * @module
 */

/**
 * One row of a `/v1/topk` answer.
 * @typedef {object} TopKRow
 * @property {number[]} indices The support, in descending output order (ties: lower index first).
 * @property {number[]} values The output at `indices`.
 * @property {number[]} [jvp] The forward derivative at `indices` (with a tangent); zero elsewhere.
 * @property {number[]} [vjp] The reverse derivative, dense, one per entry (with a cotangent).
 * @property {number} n The row's length.
 * @property {number} k The row's k.
 * @property {number[]} [dense] `values` expanded to length `n` (with `{dense: true}`).
 * @property {number[]} [denseJvp] `jvp` expanded to length `n` (with `{dense: true}` and a tangent).
 */

/**
 * `entries` (given at `indices`) as a dense row of length `n`, zeros elsewhere.
 * @param {number[]} indices
 * @param {number[]} entries
 * @param {number} n
 * @returns {number[]}
 */
export function scatter(indices, entries, n) {
  if (indices.length !== entries.length) {
    throw new RangeError(`${indices.length} indices for ${entries.length} entries`);
  }
  const row = new Array(n).fill(0);
  for (let i = 0; i < indices.length; i += 1) row[indices[i]] = entries[i];
  return row;
}

/**
 * The full output row of length `n` (zeros outside the support).
 * @param {TopKRow} row
 * @returns {number[]}
 */
export function denseValues(row) {
  return scatter(row.indices, row.values, row.n);
}

/**
 * The full forward derivative of length `n` (zeros outside the support).
 * @param {TopKRow} row
 * @returns {number[]}
 */
export function denseJvp(row) {
  if (row.jvp === undefined) throw new TypeError("this row has no jvp: send a tangent to get one");
  return scatter(row.indices, row.jvp, row.n);
}

/**
 * `row` with `dense` (and `denseJvp` when it has a jvp) added.
 * @param {TopKRow} row
 * @returns {TopKRow}
 */
export function withDense(row) {
  const expanded = { ...row, dense: denseValues(row) };
  if (row.jvp !== undefined) expanded.denseJvp = denseJvp(row);
  return expanded;
}
