// @ts-check
/**
 * Independent float64 references for the live tests: the sparse p-norm top-k mask by bisection
 * on its threshold, isotonic regression by pool-adjacent-violators, and a seeded generator.
 * None of them shares code with the server.
 */

/**
 * A deterministic generator of numbers in [0, 1) (mulberry32), so a failure can be replayed.
 * @param {number} seed
 */
export function random(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `rows` rows of `n` float32-representable numbers in [-scale, scale).
 * @param {() => number} next
 * @param {number} rows
 * @param {number} n
 * @param {number} [scale]
 * @returns {number[][]}
 */
export function matrix(next, rows, n, scale = 2) {
  return Array.from({ length: rows }, () =>
    Array.from({ length: n }, () => Math.fround((2 * next() - 1) * scale)),
  );
}

/**
 * The sparse soft top-k mask of Sander et al. (ICML 2023),
 * `y_i = clip(((x_i − τ)/ε)_+^{1/(p−1)}, 0, 1)` with τ fixed by `Σ y = k` (bisection, float64).
 * @param {number[]} x
 * @param {number} k
 * @param {number} epsilon
 * @param {number} p
 * @returns {number[]}
 */
export function sparseMask(x, k, epsilon, p) {
  const power = 1 / (p - 1);
  const at = (/** @type {number} */ tau) =>
    x.map((v) => Math.min(1, Math.max(0, (v - tau) / epsilon) ** power));
  const total = (/** @type {number} */ tau) => at(tau).reduce((a, b) => a + b, 0);
  let low = Math.min(...x) - epsilon; // every entry at 1: total n ≥ k
  let high = Math.max(...x); // every entry at 0: total 0 ≤ k
  for (let i = 0; i < 200; i += 1) {
    const mid = (low + high) / 2;
    if (total(mid) > k) low = mid;
    else high = mid;
  }
  return at((low + high) / 2);
}

/**
 * Isotonic regression of `y` (unit weights, pool-adjacent-violators), and the JVP along `t`:
 * on each pooled block the fit is the block's mean, so its derivative is the mean of `t` there.
 * @param {number[]} y
 * @param {number[]} t
 * @param {boolean} increasing
 * @returns {{fit: number[], jvp: number[]}}
 */
export function isotonic(y, t, increasing) {
  const sign = increasing ? 1 : -1; // a decreasing fit of y is minus the increasing fit of −y
  /** @type {{sum: number, tangent: number, count: number}[]} */
  const blocks = [];
  y.forEach((value, i) => {
    blocks.push({ sum: sign * value, tangent: sign * t[i], count: 1 });
    while (blocks.length > 1) {
      const last = blocks[blocks.length - 1];
      const before = blocks[blocks.length - 2];
      if (before.sum / before.count <= last.sum / last.count) break;
      blocks.pop();
      before.sum += last.sum;
      before.tangent += last.tangent;
      before.count += last.count;
    }
  });
  /** @type {number[]} */
  const fit = [];
  /** @type {number[]} */
  const jvp = [];
  for (const block of blocks) {
    for (let i = 0; i < block.count; i += 1) {
      fit.push((sign * block.sum) / block.count);
      jvp.push((sign * block.tangent) / block.count);
    }
  }
  return { fit, jvp };
}

/**
 * The largest absolute difference between two equally long vectors.
 * @param {ArrayLike<number>} a
 * @param {ArrayLike<number>} b
 */
export function maxDifference(a, b) {
  if (a.length !== b.length) throw new RangeError(`lengths ${a.length} and ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i += 1) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}
