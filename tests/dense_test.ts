import { tridiagonalEigen } from "../src/linalg/tridiagonal.ts";
import { referenceSvdFromGrams } from "./reference/gram_svd.ts";
import {
  identity,
  type Matrix,
  matrix,
  multiply,
  qr,
  svd,
  symmetricEigen,
  transpose,
} from "./reference/matrix.ts";
import { assert, assertClose, assertEquals } from "./assert.ts";
import { rng } from "./rng.ts";

function random(rows: number, cols: number, next: () => number): Matrix {
  return matrix(rows, cols, Array.from({ length: rows * cols }, next));
}

function maxAbsDiff(a: Matrix, b: Matrix): number {
  assertEquals([a.rows, a.cols], [b.rows, b.cols]);
  let m = 0;
  for (let i = 0; i < a.data.length; i++) m = Math.max(m, Math.abs(a.data[i] - b.data[i]));
  return m;
}

function scaleColumns(a: Matrix, s: ArrayLike<number>): Matrix {
  const out = matrix(a.rows, a.cols, a.data);
  for (let i = 0; i < a.rows; i++) {
    for (let j = 0; j < a.cols; j++) out.data[i * a.cols + j] *= s[j];
  }
  return out;
}

function columns(a: Matrix, keep: number[]): Matrix {
  const out = matrix(a.rows, keep.length);
  for (let i = 0; i < a.rows; i++) {
    keep.forEach((j, c) => out.data[i * keep.length + c] = a.data[i * a.cols + j]);
  }
  return out;
}

Deno.test("matrix basics: identity, transpose, multiply by hand", () => {
  const a = matrix(2, 3, [1, 2, 3, 4, 5, 6]);
  assertEquals(Array.from(transpose(a).data), [1, 4, 2, 5, 3, 6]);
  assertEquals(Array.from(multiply(a, transpose(a)).data), [14, 32, 32, 77]);
  assertEquals(Array.from(multiply(identity(2), a).data), Array.from(a.data));
});

Deno.test("qr: Q·R = A, QᵀQ = I, R upper triangular (tall, wide, rank-deficient)", () => {
  const next = rng(1);
  const dup = random(6, 4, next);
  for (let i = 0; i < 6; i++) dup.data[i * 4 + 3] = dup.data[i * 4 + 1];
  for (const a of [random(7, 4, next), random(4, 7, next), random(5, 5, next), dup]) {
    const { q, r } = qr(a);
    const k = Math.min(a.rows, a.cols);
    assertEquals([q.rows, q.cols, r.rows, r.cols], [a.rows, k, k, a.cols]);
    assert(maxAbsDiff(multiply(q, r), a) < 1e-14);
    assert(maxAbsDiff(multiply(transpose(q), q), identity(k)) < 1e-14);
    for (let i = 0; i < k; i++) for (let j = 0; j < i; j++) assertEquals(r.data[i * a.cols + j], 0);
  }
});

Deno.test("symmetricEigen: hand example and A·V = V·Λ with orthonormal V, descending", () => {
  const { values } = symmetricEigen(matrix(2, 2, [2, 1, 1, 2]));
  assertClose(values[0], 3, 1e-15);
  assertClose(values[1], 1, 1e-15);
  const b = random(12, 12, rng(2));
  const a = multiply(b, transpose(b));
  const e = symmetricEigen(a);
  assert(maxAbsDiff(multiply(a, e.vectors), scaleColumns(e.vectors, e.values)) < 1e-13);
  assert(maxAbsDiff(multiply(transpose(e.vectors), e.vectors), identity(12)) < 1e-14);
  for (let i = 1; i < 12; i++) assert(e.values[i] <= e.values[i - 1]);
});

Deno.test("svd: hand example, reconstruction, orthonormal factors, known spectrum", () => {
  assertEquals(Array.from(svd(matrix(2, 2, [3, 0, 0, -4])).s), [4, 3]);
  const next = rng(3);
  for (const a of [random(9, 5, next), random(5, 9, next), random(6, 6, next)]) {
    const { u, s, v } = svd(a);
    const k = Math.min(a.rows, a.cols);
    assertEquals([u.rows, u.cols, s.length, v.rows, v.cols], [a.rows, k, k, a.cols, k]);
    assert(maxAbsDiff(multiply(scaleColumns(u, s), transpose(v)), a) < 1e-14);
    assert(maxAbsDiff(multiply(transpose(u), u), identity(k)) < 1e-14);
    assert(maxAbsDiff(multiply(transpose(v), v), identity(k)) < 1e-14);
    for (let i = 1; i < k; i++) assert(s[i] <= s[i - 1]);
  }
  // Q₁·diag(s)·Q₂ᵀ: forming it perturbs each σ by ~1e-15 absolute, so small ones keep ~1e-10.
  const known = [3, 1, 0.25, 1e-3, 1e-5];
  const q1 = qr(random(8, 5, next)).q, q2 = qr(random(5, 5, next)).q;
  const got = svd(multiply(scaleColumns(q1, known), transpose(q2))).s;
  known.forEach((x, i) => assertClose(got[i] / x, 1, 1e-9, `σ${i}`));
});

Deno.test("svd: a rank-deficient input gives a negligible tail and still reconstructs", () => {
  const next = rng(4);
  const b = random(7, 2, next), c = random(2, 4, next);
  const { u, s, v } = svd(multiply(b, c)); // rank 2
  assert(s[2] < 1e-15 * s[0] && s[3] < 1e-15 * s[0]);
  assert(maxAbsDiff(multiply(scaleColumns(u, s), transpose(v)), multiply(b, c)) < 1e-14);
  const top = [0, 1];
  assert(
    maxAbsDiff(multiply(transpose(columns(u, top)), columns(u, top)), identity(2)) < 1e-14,
  );
});

Deno.test("tridiagonalEigen: matches the dense eigendecomposition, first and last rows", () => {
  const next = rng(5);
  for (const n of [1, 2, 9]) {
    const d = Float64Array.from({ length: n }, next);
    const e = Float64Array.from({ length: n - 1 }, next);
    const t = matrix(n, n);
    for (let i = 0; i < n; i++) {
      t.data[i * n + i] = d[i];
      if (i < n - 1) t.data[i * n + i + 1] = t.data[(i + 1) * n + i] = e[i];
    }
    const dense = symmetricEigen(t);
    const tri = tridiagonalEigen(d, e);
    for (let i = 0; i < n; i++) {
      assertClose(tri.values[i], dense.values[i], 1e-14);
      assertClose(Math.abs(tri.first[i]), Math.abs(dense.vectors.data[i]), 1e-12);
      assertClose(Math.abs(tri.last[i]), Math.abs(dense.vectors.data[(n - 1) * n + i]), 1e-12);
    }
  }
  assertEquals(tridiagonalEigen(new Float64Array(0), new Float64Array(0)).values.length, 0);
});

/** U = B·T_B, V = Aᵀ·T_A as dense matrices. */
function factorsOf(
  b: Matrix,
  a: Matrix,
  t: { upTransform: Float64Array; downTransform: Float64Array; sigma: Float64Array },
) {
  const r = b.cols, k = t.sigma.length;
  return {
    u: multiply(b, matrix(r, k, t.upTransform)),
    v: multiply(transpose(a), matrix(r, k, t.downTransform)),
  };
}

Deno.test("referenceSvdFromGrams: the worked example B = [1, 0]ᵀ, A = [2, 0, 0], scale 0.5 gives σ = 1", () => {
  const d = referenceSvdFromGrams(matrix(1, 1, [1]), matrix(1, 1, [4]), {
    scale: 0.5,
    out: 2,
    inFlat: 3,
  });
  assertEquals(Array.from(d.sigma), [1]);
  const { u, v } = factorsOf(matrix(2, 1, [1, 0]), matrix(1, 3, [2, 0, 0]), d);
  assertEquals(Array.from(u.data).map(Math.abs), [1, 0]);
  assertEquals(Array.from(v.data).map(Math.abs), [1, 0, 0]);
});

Deno.test("referenceSvdFromGrams: SVD of scale·B·A, including r > min(out, in′) and a negative scale", () => {
  const next = rng(6);
  for (const [out, inFlat, r, scale] of [[20, 13, 6, 0.5], [5, 9, 8, 2], [7, 4, 4, -1.5]]) {
    const b = random(out, r, next), a = random(r, inFlat, next);
    const d = referenceSvdFromGrams(
      multiply(transpose(b), b),
      multiply(a, transpose(a)),
      { scale, out, inFlat },
    );
    const k = Math.min(out, inFlat, r);
    assertEquals(d.sigma.length, k);
    const delta = multiply(b, a);
    delta.data.forEach((x, i) => delta.data[i] = scale * x);
    const exact = svd(delta).s;
    for (let i = 0; i < k; i++) assertClose(d.sigma[i], exact[i], 1e-12);
    const { u, v } = factorsOf(b, a, d);
    assert(maxAbsDiff(multiply(scaleColumns(u, d.sigma), transpose(v)), delta) < 1e-13);
    assert(maxAbsDiff(multiply(transpose(u), u), identity(k)) < 1e-12);
    assert(maxAbsDiff(multiply(transpose(v), v), identity(k)) < 1e-12);
  }
});

Deno.test("referenceSvdFromGrams: zero Gram matrices give k exact zeros and zero transforms", () => {
  const d = referenceSvdFromGrams(matrix(3, 3), matrix(3, 3), { scale: 1, out: 2, inFlat: 5 });
  assertEquals(Array.from(d.sigma), [0, 0]);
  assert(d.upTransform.every((x) => x === 0) && d.downTransform.every((x) => x === 0));
  assertEquals(d.upTransform.length, 6);
});
