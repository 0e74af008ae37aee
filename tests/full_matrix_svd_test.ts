/**
 * The two-step SVD of a matrix stored in full (a LoKr factor): singular values alone, then the
 * singular pairs of chosen dimensions. Checked against the dense reference SVD of
 * tests/reference/matrix.ts (one-sided Jacobi, independent of the kernels) and against the
 * matrix itself (the pairs of every dimension rebuild it).
 */

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { matrix, multiply, type SVD, svd, transpose } from "./reference/matrix.ts";
import { BackendError } from "../src/errors.ts";
import type { FullMatrix, RebuiltFactors } from "../src/linalg/backend.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { singularPairsOnHost, spectraOnHost } from "../src/linalg/gpu/full_matrix.ts";
import { decodeFloats, encodeFloats, type FloatDType } from "../src/safetensors/dtype.ts";
import { rng } from "./rng.ts";

/** A full matrix of the given values in `dtype`, and the values as that dtype holds them. */
function full(rows: number, cols: number, values: ArrayLike<number>, dtype: FloatDType = "F32") {
  const bytes = encodeFloats(Float64Array.from(values), dtype);
  const m: FullMatrix = { data: { dtype, bytes }, rows, cols };
  return { m, held: matrix(rows, cols, decodeFloats(bytes, dtype, Float64Array)) };
}

function randomFull(rows: number, cols: number, seed: number, dtype: FloatDType = "F32") {
  const r = rng(seed);
  return full(rows, cols, Array.from({ length: rows * cols }, r), dtype);
}

/** up·down as a dense matrix, and up, down as f64. */
function product(f: RebuiltFactors, rows: number, cols: number) {
  const up = decodeFloats(f.up.bytes, f.up.dtype, Float64Array);
  const down = decodeFloats(f.down.bytes, f.down.dtype, Float64Array);
  const k = up.length / rows;
  return { up, down, k, dense: multiply(matrix(rows, k, up), matrix(k, cols, down)) };
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Largest |XᵀX − I| over the columns of X (rows × k) divided by `scales` (the norms to remove). */
function orthonormalityError(x: Float64Array, rows: number, k: number, scales: number[]): number {
  let worst = 0;
  for (let p = 0; p < k; p++) {
    for (let q = 0; q < k; q++) {
      let s = 0;
      for (let i = 0; i < rows; i++) s += x[i * k + p] * x[i * k + q];
      worst = Math.max(worst, Math.abs(s / (scales[p] * scales[q]) - (p === q ? 1 : 0)));
    }
  }
  return worst;
}

/**
 * Asserts that kept pair t of `pairs` is the dense SVD's rank-one term σⱼ·uⱼ·vⱼᵀ (j = keep[t]),
 * within f32 rounding of σ₁ (the term does not depend on the vectors' signs).
 */
function assertRankOneTerms(pairs: RebuiltFactors, ref: SVD, keep: readonly number[]): void {
  const rows = ref.u.rows, cols = ref.v.rows, k = keep.length;
  const up = decodeFloats(pairs.up.bytes, "F32", Float64Array);
  const down = decodeFloats(pairs.down.bytes, "F32", Float64Array);
  keep.forEach((j, t) => {
    let worst = 0;
    for (let a = 0; a < rows; a++) {
      for (let b = 0; b < cols; b++) {
        const got = up[a * k + t] * down[t * cols + b];
        const want = ref.s[j] * ref.u.data[a * ref.u.cols + j] * ref.v.data[b * ref.v.cols + j];
        worst = Math.max(worst, Math.abs(got - want));
      }
    }
    assert(worst <= 1e-6 * ref.s[0], `${rows}×${cols} dimension ${j}: ${worst}`);
  });
}

const SHAPES: [number, number][] = [[5, 9], [9, 5], [40, 40], [24, 64], [64, 24], [1, 7], [7, 1]];

Deno.test("the singular values of a full matrix equal a dense SVD's: wide, tall, square, every float dtype", async () => {
  for (const dtype of ["F16", "BF16", "F32", "F64"] as const) {
    for (const [i, [rows, cols]] of SHAPES.entries()) {
      const { m, held } = randomFull(rows, cols, 11 + i, dtype);
      const [{ sigma }] = await spectraOnHost([m]);
      const want = svd(held).s;
      assertEquals(sigma.length, Math.min(rows, cols));
      // Eigenvalues of the Gram are exact to ~ε·n·σ₁²: the small σ lose relative digits.
      const tolerance = 1e-13 * Math.max(rows, cols) * want[0];
      assert(maxDiff(sigma, want) <= tolerance, `${dtype} ${rows}×${cols}: ${sigma} vs ${want}`);
      for (let j = 1; j < sigma.length; j++) assert(sigma[j] <= sigma[j - 1], "descending");
    }
  }
});

Deno.test("the singular pairs of every dimension rebuild the matrix, with orthonormal vectors on both sides", async () => {
  for (const [i, [rows, cols]] of SHAPES.entries()) {
    const { m, held } = randomFull(rows, cols, 31 + i);
    const [spectrum] = await spectraOnHost([m]);
    const keep = [...spectrum.sigma.keys()];
    const [pairs] = await singularPairsOnHost([{ matrix: m, spectrum, keep }]);
    const { up, down, k, dense } = product(pairs, rows, cols);
    // f32 outputs: each rebuilt element is exact to a few f32 roundings of the largest.
    assert(maxDiff(dense.data, held.data) <= 1e-6 * maxAbs(held.data), `${rows}×${cols}`);
    const scales = keep.map((j) => Math.sqrt(spectrum.sigma[j]));
    assert(orthonormalityError(up, rows, k, scales) < 1e-5, `U of ${rows}×${cols}`);
    const downT = transpose(matrix(k, cols, down)).data;
    assert(orthonormalityError(downT, cols, k, scales) < 1e-5, `V of ${rows}×${cols}`);
  }
});

Deno.test("the singular pairs of chosen dimensions are the dense SVD's rank-one terms", async () => {
  for (const [rows, cols] of [[30, 50], [50, 30]] as const) {
    const { m, held } = randomFull(rows, cols, 5);
    const [spectrum] = await spectraOnHost([m]);
    const keep = [0, 3, 4, 17, 29];
    const [pairs] = await singularPairsOnHost([{ matrix: m, spectrum, keep }]);
    assertRankOneTerms(pairs, svd(held), keep);
  }
});

Deno.test("a matrix wider than 256 on its short side carries no tridiagonal, and its pairs are still the dense SVD's", async () => {
  for (const [rows, cols] of [[257, 300], [256, 270]] as const) {
    const { m, held } = randomFull(rows, cols, 8);
    const [spectrum] = await spectraOnHost([m]);
    assertEquals(spectrum.tridiagonal.length === 0, rows > 256, `${rows}×${cols}`);
    const keep = [0, 7, rows - 1];
    const [pairs] = await singularPairsOnHost([{ matrix: m, spectrum, keep }]);
    const ref = svd(held);
    assert(maxDiff(spectrum.sigma, ref.s) <= 1e-12 * cols * ref.s[0]);
    assertRankOneTerms(pairs, ref, keep);
  }
});

Deno.test("a rank-deficient matrix has exact zero singular values, whose kept vectors are zero", async () => {
  const r = rng(3);
  const b = matrix(12, 3, Array.from({ length: 36 }, r));
  const a = matrix(3, 20, Array.from({ length: 60 }, r));
  const { m, held } = full(12, 20, multiply(b, a).data, "F64");
  const [spectrum] = await spectraOnHost([m]);
  assert(spectrum.sigma.slice(0, 3).every((s) => s > 0.01), `${spectrum.sigma}`);
  assert(spectrum.sigma.slice(3).every((s) => s === 0), `${spectrum.sigma}`);
  const keep = [...spectrum.sigma.keys()];
  const [pairs] = await singularPairsOnHost([{ matrix: m, spectrum, keep }]);
  const { up, down, dense } = product(pairs, 12, 20);
  for (let t = 3; t < 12; t++) {
    for (let i = 0; i < 12; i++) assertEquals(up[i * 12 + t], 0);
    for (let c = 0; c < 20; c++) assertEquals(down[t * 20 + c], 0);
  }
  assert(maxDiff(dense.data, held.data) <= 1e-6 * maxAbs(held.data));
});

Deno.test("repeated singular values keep orthonormal vectors: an identity, and a matrix with a triple σ", async () => {
  const n = 30;
  const eye = full(n, n, Array.from({ length: n * n }, (_, i) => i % (n + 1) === 0 ? 1 : 0));
  // Q·diag(3, 3, 3, 1, 1, 0.5)·Pᵀ with orthonormal Q (8 × 6) and P (10 × 6) from the reference SVD.
  const basis = svd(randomFull(8, 10, 9).held);
  const s = [3, 3, 3, 1, 1, 0.5];
  const values = new Float64Array(80);
  for (let a = 0; a < 8; a++) {
    for (let c = 0; c < 10; c++) {
      for (let j = 0; j < 6; j++) {
        values[a * 10 + c] += basis.u.data[a * 8 + j] * s[j] * basis.v.data[c * 8 + j];
      }
    }
  }
  const triple = full(8, 10, values, "F64");
  for (const { m, held } of [eye, triple]) {
    const [spectrum] = await spectraOnHost([m]);
    const keep = [...spectrum.sigma.keys()].filter((j) => spectrum.sigma[j] > 0);
    const [pairs] = await singularPairsOnHost([{ matrix: m, spectrum, keep }]);
    const { up, k, dense } = product(pairs, m.rows, m.cols);
    const scales = keep.map((j) => Math.sqrt(spectrum.sigma[j]));
    assert(orthonormalityError(up, m.rows, k, scales) < 1e-6, `${m.rows}×${m.cols}`);
    assert(maxDiff(dense.data, held.data) <= 1e-6 * maxAbs(held.data), `${m.rows}×${m.cols}`);
  }
});

Deno.test("singular values scale with the matrix, far from 1 (F64 entries around 1e±120), and so do the pairs (1e±15)", async () => {
  const { m, held } = randomFull(20, 30, 4, "F64");
  const [spectrum] = await spectraOnHost([m]);
  const scaled = (c: number) => full(20, 30, held.data.map((x) => x * c), "F64").m;
  for (const c of [1e120, 1e-120]) {
    const [{ sigma }] = await spectraOnHost([scaled(c)]);
    sigma.forEach((v, i) =>
      assert(Math.abs(v / c - spectrum.sigma[i]) <= 1e-12 * spectrum.sigma[0], `${c}: ${v}`)
    );
  }
  // The pairs are f32, so their √σ must fit one: 1e±15 entries.
  const [pairs] = await singularPairsOnHost([{ matrix: m, spectrum, keep: [0, 19] }]);
  const want = product(pairs, 20, 30).dense.data;
  for (const c of [1e15, 1e-15]) {
    const matrix = scaled(c);
    const [got] = await singularPairsOnHost([{
      matrix,
      spectrum: (await spectraOnHost([matrix]))[0],
      keep: [0, 19],
    }]);
    const dense = product(got, 20, 30).dense.data.map((x) => x / c);
    assert(maxDiff(dense, want) <= 1e-6 * maxAbs(want), `${c}`);
  }
});

Deno.test("a NaN or an infinity in a full matrix gives NaN singular values, never zeros", async () => {
  for (const bad of [NaN, Infinity]) {
    const values = Array.from({ length: 12 }, (_, i) => i === 7 ? bad : i);
    const [{ sigma }] = await spectraOnHost([full(3, 4, values).m]);
    assert(sigma.every(Number.isNaN), `${sigma}`);
  }
});

Deno.test("the CPU backend's workers and the host path give the same bytes", async () => {
  await using backend = await createCpuBackend({ workers: 2, inlineWork: 0 });
  const matrices = SHAPES.map(([rows, cols], i) => randomFull(rows, cols, 70 + i, "BF16").m);
  const [host, workers] = [await spectraOnHost(matrices), await backend.spectra(matrices)];
  host.forEach((h, i) => {
    assertEquals(workers[i].sigma, h.sigma);
    assertEquals(workers[i].tridiagonal, h.tridiagonal);
  });
  const requests = matrices.map((matrix, i) => ({ matrix, spectrum: host[i], keep: [0] }));
  const [a, b] = [await singularPairsOnHost(requests), await backend.singularPairs(requests)];
  a.forEach((f, i) => {
    assertEquals(b[i].up.bytes, f.up.bytes);
    assertEquals(b[i].down.bytes, f.down.bytes);
  });
});

Deno.test("malformed full-matrix requests fail with one line naming the item", async () => {
  await using backend = await createCpuBackend({ workers: 0 });
  const { m } = randomFull(4, 6, 1);
  await assertRejects(
    () => backend.spectra([{ ...m, cols: 7 }]),
    BackendError,
    "spectra: matrix 0: 96 bytes, expected 112 (F32 4×7)",
  );
  const [spectrum] = await backend.spectra([m]);
  await assertRejects(
    () => backend.singularPairs([{ matrix: m, spectrum, keep: [1, 4] }]),
    BackendError,
    "singularPairs: matrix 0: keep must be ascending indices below 4, got [1, 4]",
  );
  await assertRejects(
    () =>
      backend.singularPairs([{
        matrix: m,
        spectrum: { ...spectrum, sigma: spectrum.sigma.slice(1) },
        keep: [0],
      }]),
    BackendError,
    "singularPairs: matrix 0: 3 singular values for a 4×6 matrix",
  );
});
