import { BackendError, SafetensorsError } from "../src/errors.ts";
import type {
  Backend,
  BaseNorms,
  BaseWeightRef,
  Decomposition,
  FloatData,
  LowRankFactors,
  RebuiltFactors,
} from "../src/linalg/backend.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { referenceSvdFromGrams } from "./reference/gram_svd.ts";
import { identity, type Matrix, matrix, multiply, qr, svd, transpose } from "./reference/matrix.ts";
import { decodeFloats, encodeFloats, type FloatDType } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { assert, assertEquals, assertRejects, assertRelClose } from "./assert.ts";
import { streamed } from "./streamed.ts";
import { rng } from "./rng.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);

function floatData(values: ArrayLike<number>, dtype: FloatDType): FloatData {
  return { dtype, bytes: encodeFloats(values, dtype) };
}

/** The matrix a FloatData holds, decoded exactly. */
function decoded(data: FloatData, rows: number, cols: number): Matrix {
  return matrix(rows, cols, decodeFloats(data.bytes, data.dtype, Float64Array));
}

interface TestLayer {
  readonly factors: LowRankFactors;
  /** B and A as stored (decoded). */
  readonly b: Matrix;
  readonly a: Matrix;
}

function makeLayer(
  shape: { out: number; rank: number; inFlat: number; scale?: number; dtype?: FloatDType },
  next: () => number,
  edit: (b: Float64Array, a: Float64Array) => void = () => {},
): TestLayer {
  const { out, rank, inFlat, scale = 0.5, dtype = "F32" } = shape;
  const bv = Float64Array.from({ length: out * rank }, next);
  const av = Float64Array.from({ length: rank * inFlat }, next);
  edit(bv, av);
  const up = floatData(bv, dtype), down = floatData(av, dtype);
  return {
    factors: { up, down, out, rank, inFlat, scale },
    b: decoded(up, out, rank),
    a: decoded(down, rank, inFlat),
  };
}

/** U = B·T_B (out × k) and V = Aᵀ·T_A (in′ × k). */
function singularVectors(layer: TestLayer, d: Decomposition): { u: Matrix; v: Matrix } {
  const r = layer.factors.rank, k = d.sigma.length;
  return {
    u: multiply(layer.b, matrix(r, k, d.upTransform)),
    v: multiply(transpose(layer.a), matrix(r, k, d.downTransform)),
  };
}

function frobenius(m: Matrix): number {
  return Math.sqrt(m.data.reduce((s, x) => s + x * x, 0));
}

function difference(x: Matrix, y: Matrix): Matrix {
  return matrix(x.rows, x.cols, x.data.map((v, i) => v - y.data[i]));
}

/** Σ_{i in keep} w·σᵢ·uᵢ·vᵢᵀ. */
function partialSum(u: Matrix, sigma: Float64Array, v: Matrix, keep: number[], w = 1): Matrix {
  const us = matrix(u.rows, keep.length), vs = matrix(v.rows, keep.length);
  keep.forEach((i, c) => {
    for (let r = 0; r < u.rows; r++) {
      us.data[r * keep.length + c] = u.data[r * u.cols + i] * w * sigma[i];
    }
    for (let r = 0; r < v.rows; r++) vs.data[r * keep.length + c] = v.data[r * v.cols + i];
  });
  return multiply(us, transpose(vs));
}

/** Max |XᵀX − I| over the columns `keep`. */
function orthonormalityError(x: Matrix, keep: number[]): number {
  const cols = matrix(x.rows, keep.length);
  keep.forEach((j, c) => {
    for (let r = 0; r < x.rows; r++) cols.data[r * keep.length + c] = x.data[r * x.cols + j];
  });
  const g = multiply(transpose(cols), cols), id = identity(keep.length);
  return g.data.reduce((m, v, i) => Math.max(m, Math.abs(v - id.data[i])), 0);
}

function checkDecomposition(layer: TestLayer, d: Decomposition, what: string): void {
  const { out, rank, inFlat, scale } = layer.factors;
  const k = Math.min(out, inFlat, rank);
  assertEquals(d.sigma.length, k, `${what}: k`);
  assertEquals([d.upTransform.length, d.downTransform.length], [rank * k, rank * k]);
  for (let i = 1; i < k; i++) assert(d.sigma[i] <= d.sigma[i - 1], `${what}: σ descending`);
  assert(d.sigma.every((s) => s >= 0 && Number.isFinite(s)), `${what}: σ finite, ≥ 0`);
  const delta = multiply(layer.b, layer.a);
  delta.data.forEach((x, i) => delta.data[i] = scale * x);
  const { u, v } = singularVectors(layer, d);
  const all = Array.from(d.sigma.keys());
  const rebuilt = partialSum(u, d.sigma, v, all);
  const norm = frobenius(delta);
  if (norm === 0) {
    assert(rebuilt.data.every((x) => x === 0), `${what}: zero layer rebuilds to zero`);
  } else {
    const err = frobenius(difference(rebuilt, delta)) / norm;
    assert(err < 1e-10, `${what}: relative reconstruction error ${err}`);
  }
  const nonzero = all.filter((i) => d.sigma[i] > 0);
  assert(orthonormalityError(u, nonzero) < 1e-10, `${what}: UᵀU = I`);
  assert(orthonormalityError(v, nonzero) < 1e-10, `${what}: VᵀV = I`);
}

Deno.test("decompose: U·diag(σ)·Vᵀ = scale·B·A with orthonormal U, V, σ descending, k = min(out, in′, r)", async () => {
  const next = rng(11);
  const cases: [string, TestLayer][] = [
    ["linear", makeLayer({ out: 40, rank: 8, inFlat: 24 }, next)],
    ["3×3 conv", makeLayer({ out: 12, rank: 4, inFlat: 6 * 9, dtype: "F16" }, next)],
    ["r > out", makeLayer({ out: 6, rank: 16, inFlat: 10, dtype: "BF16" }, next)],
    ["r > in′", makeLayer({ out: 20, rank: 16, inFlat: 7, scale: 2 }, next)],
    ["conv, r > out", makeLayer({ out: 5, rank: 8, inFlat: 4 * 9, dtype: "F16" }, next)],
    ["negative scale", makeLayer({ out: 9, rank: 3, inFlat: 11, scale: -0.25 }, next)],
  ];
  await using backend = await createCpuBackend({ workers: 0 });
  const ds = await backend.decompose(cases.map(([, l]) => l.factors));
  cases.forEach(([what, layer], i) => checkDecomposition(layer, ds[i], what));
});

Deno.test("decompose: rank-deficient and all-zero layers give exact zeros, no NaN", async () => {
  const next = rng(12);
  const dup = makeLayer({ out: 30, rank: 8, inFlat: 20 }, next, (b, a) => {
    for (let i = 0; i < 30; i++) b[i * 8 + 3] = b[i * 8 + 1]; // duplicated column of B
    for (let j = 0; j < 20; j++) a[5 * 20 + j] = a[2 * 20 + j]; // duplicated row of A
  });
  const zero = makeLayer({ out: 10, rank: 4, inFlat: 27, dtype: "F16" }, () => 0);
  await using backend = await createCpuBackend({ workers: 0 });
  const [d, z] = await backend.decompose([dup.factors, zero.factors]);
  checkDecomposition(dup, d, "duplicated columns");
  assertEquals(d.sigma[7], 0); // rank(B) = 7: at most 7 nonzero values
  checkDecomposition(zero, z, "all zero");
  assertEquals(Array.from(z.sigma), [0, 0, 0, 0]);
  assert(z.upTransform.every((x) => x === 0) && z.downTransform.every((x) => x === 0));
});

Deno.test("decompose: rank 96 with a graded spectrum and rank-deficient factors, as the TypeScript path", async () => {
  const next = rng(14);
  // Columns of B and rows of A scaled by (i + 1)^-2: σ spans about eight decades.
  const graded =
    (rank: number, out: number, inFlat: number) => (b: Float64Array, a: Float64Array) => {
      for (let i = 0; i < rank; i++) {
        const s = (i + 1) ** -2;
        for (let o = 0; o < out; o++) b[o * rank + i] *= s;
        for (let j = 0; j < inFlat; j++) a[i * inFlat + j] *= s;
      }
    };
  const cases: [string, TestLayer][] = [
    [
      "graded",
      makeLayer({ out: 150, rank: 96, inFlat: 130, dtype: "F64" }, next, graded(96, 150, 130)),
    ],
    [
      "r > out",
      makeLayer({ out: 70, rank: 96, inFlat: 200, dtype: "F64" }, next, graded(96, 70, 200)),
    ],
    ["r > in′", makeLayer({ out: 120, rank: 96, inFlat: 50, scale: -1 }, next)],
  ];
  await using backend = await createCpuBackend({ workers: 0 });
  const ds = await backend.decompose(cases.map(([, l]) => l.factors));
  cases.forEach(([what, layer], i) => {
    checkDecomposition(layer, ds[i], what);
    const { b, a } = layer, { out, rank, inFlat } = layer.factors;
    const reference = referenceSvdFromGrams(
      multiply(transpose(b), b),
      multiply(a, transpose(a)),
      layer.factors,
    );
    ds[i].sigma.forEach((s, j) =>
      assert(Math.abs(s - reference.sigma[j]) <= 1e-12 * reference.sigma[0], `${what}: σ${j}`)
    );
    assertEquals(ds[i].sigma.length, Math.min(out, rank, inFlat));
  });
});

Deno.test("decompose: F64 factors too large for the core's float64 sums (2¹⁵⁰, 2³⁰⁰ times a layer) give that layer's σ times 2³⁰⁰, 2⁶⁰⁰", async () => {
  // The eigensolver of the core squares MᵀM, whose entries grow as the 4th power of the factors:
  // beyond ~1e38 that overflows float64. Scaling the factors by 2ᵉ scales ΔW, so σ, by 2²ᵉ
  // exactly, and the transforms (U = B·T_B stays orthonormal) by 2⁻ᵉ.
  const unit = makeLayer({ out: 9, rank: 5, inFlat: 12, scale: -0.75, dtype: "F64" }, rng(21));
  const scaled = (e: number): LowRankFactors => {
    const times = (m: Matrix) => floatData(m.data.map((x) => x * 2 ** e), "F64");
    return { ...unit.factors, up: times(unit.b), down: times(unit.a) };
  };
  await using backend = await createCpuBackend({ workers: 0 });
  const [d, ...big] = await backend.decompose([unit.factors, scaled(150), scaled(300)]);
  checkDecomposition(unit, d, "unit layer");
  [150, 300].forEach((e, i) => {
    d.sigma.forEach((s, j) => assertRelClose(big[i].sigma[j], s * 2 ** (2 * e), 1e-12));
    const largest = Math.max(...d.upTransform.map(Math.abs), ...d.downTransform.map(Math.abs));
    for (
      const [got, want] of [[big[i].upTransform, d.upTransform], [
        big[i].downTransform,
        d.downTransform,
      ]]
    ) {
      want.forEach((t, j) =>
        assert(Math.abs(got[j] * 2 ** e - t) <= 1e-10 * largest, `2^${e}: T[${j}]`)
      );
    }
  });
});

Deno.test("decompose: F16, BF16, F32 and F64 inputs of the same values give identical results", async () => {
  const next = rng(13);
  // Multiples of 2⁻⁴ in [−8, 8]: exact in every dtype.
  const values = (n: number) => Array.from({ length: n }, () => Math.round(next() * 256) / 16);
  const bv = values(15 * 6), av = values(6 * 18);
  await using backend = await createCpuBackend({ workers: 0 });
  const ds = await backend.decompose(
    (["F16", "BF16", "F32", "F64"] as const).map((dtype) => ({
      up: floatData(bv, dtype),
      down: floatData(av, dtype),
      out: 15,
      rank: 6,
      inFlat: 18,
      scale: 1,
    })),
  );
  for (const d of ds.slice(1)) assertEquals(d, ds[0]);
  const exact = svd(multiply(matrix(15, 6, bv), matrix(6, 18, av))).s;
  ds[0].sigma.forEach((s, i) => assertRelClose(s, exact[i], 1e-12));
});

Deno.test("rebuild: up·down·(scale·k′)/k′ = Σ_kept rescale·σᵢ·uᵢ·vᵢᵀ (float32)", async () => {
  const next = rng(14);
  const layer = makeLayer({ out: 23, rank: 6, inFlat: 5 * 9, scale: 0.75, dtype: "F16" }, next);
  const zero = makeLayer({ out: 4, rank: 2, inFlat: 3 }, () => 0);
  await using backend = await createCpuBackend({ workers: 0 });
  const [d, dz] = await backend.decompose([layer.factors, zero.factors]);
  const keep = [0, 2, 3];
  const [rebuilt, none, zeros] = await backend.rebuild([
    { factors: layer.factors, decomposition: d, keep, rescale: 0.7 },
    { factors: layer.factors, decomposition: d, keep: [], rescale: 1 },
    { factors: zero.factors, decomposition: dz, keep: [0, 1], rescale: 1 },
  ]);
  assertEquals([rebuilt.up.dtype, rebuilt.down.dtype], ["F32", "F32"]);
  const [up, down] = [values(rebuilt.up), values(rebuilt.down)];
  assertEquals([up.length, down.length], [23 * 3, 3 * 45]);
  const product = multiply(matrix(23, 3, up), matrix(3, 45, down));
  product.data.forEach((x, i) => product.data[i] = x * layer.factors.scale);
  const { u, v } = singularVectors(layer, d);
  const expected = partialSum(u, d.sigma, v, keep, 0.7);
  assert(frobenius(difference(product, expected)) / frobenius(expected) < 1e-6);
  assertEquals([none.up.bytes.length, none.down.bytes.length], [0, 0]);
  assert(values(zeros.up).every((x) => x === 0) && values(zeros.down).every((x) => x === 0));
});

Deno.test("rebuild: F16 and BF16 factors are encodeFloats of the F32 ones (workers too)", async () => {
  const next = rng(15);
  const layer = makeLayer({ out: 37, rank: 9, inFlat: 3 * 9, scale: -0.5, dtype: "BF16" }, next);
  // Wide enough for every block path of the fused kernels: 150 rows (two blocks of 64 and a
  // tail), 300 columns (a block of 256 and a tail), odd sizes, a kept count that is no multiple
  // of 4.
  const wide = makeLayer({ out: 150, rank: 7, inFlat: 300, scale: 0.25, dtype: "F16" }, next);
  for (const workers of [0, 2]) {
    await using backend = await createCpuBackend({ workers, inlineWork: 0 });
    for (const { factors } of [layer, wide]) {
      const [d] = await backend.decompose([factors]);
      for (const dtype of ["F16", "BF16"] as const) {
        for (const keep of [[0, 1, 2, 4, 5, 6], [1, 3, 4], [2], []]) {
          const [rebuilt, plain] = await backend.rebuild([
            { factors, decomposition: d, keep, rescale: 1e4, dtype },
            { factors, decomposition: d, keep, rescale: 1e4, dtype: "F32" },
          ]);
          assertEquals(rebuilt.up, { dtype, bytes: encodeFloats(values(plain.up), dtype) });
          assertEquals(rebuilt.down, { dtype, bytes: encodeFloats(values(plain.down), dtype) });
        }
      }
    }
  }
});

Deno.test("rebuild: an output dtype the backends do not make is refused", async () => {
  const layer = makeLayer({ out: 4, rank: 2, inFlat: 3 }, rng(16));
  await using backend = await createCpuBackend({ workers: 0 });
  const [d] = await backend.decompose([layer.factors]);
  const request = { factors: layer.factors, decomposition: d, keep: [0], rescale: 1 };
  await assertRejects(
    () => backend.rebuild([{ ...request, dtype: "F64" as "F32" }]),
    BackendError,
    "rebuild: layer 0: cannot rebuild factors as F64 (F16, BF16 or F32)",
  );
});

/** A factor's values (any float dtype). */
function values(data: FloatData): Float64Array {
  return decodeFloats(data.bytes, data.dtype, Float64Array);
}

// ------------------------------------------------------------------ base weights

interface WeightCase {
  readonly name: string;
  readonly dtype: FloatDType;
  readonly rows: number;
  readonly cols: number;
  readonly values: Float64Array;
}

/** Writes the weights to a temporary safetensors file; returns refs and the decoded values. */
async function writeWeights(dir: string, cases: WeightCase[]) {
  const path = `${dir}/weights.safetensors`;
  await writeSafetensors(
    path,
    cases.map((c) => ({
      name: c.name,
      dtype: c.dtype,
      shape: [c.rows, c.cols],
      data: encodeFloats(c.values, c.dtype),
    })),
  );
  await using file = await SafetensorsFile.open(path);
  return cases.map((c) => ({
    ref: {
      path,
      dtype: c.dtype,
      offset: file.byteRange(c.name).offset,
      rows: c.rows,
      cols: c.cols,
    },
    w: matrix(c.rows, c.cols, decodeFloats(encodeFloats(c.values, c.dtype), c.dtype, Float64Array)),
  }));
}

/** Q₁·diag(s)·Q₂ᵀ with random orthonormal Q from QR. */
function withSpectrum(rows: number, cols: number, s: number[], next: () => number): Float64Array {
  const q1 = qr(matrix(rows, s.length, Array.from({ length: rows * s.length }, next))).q;
  const q2 = qr(matrix(cols, s.length, Array.from({ length: cols * s.length }, next))).q;
  const scaled = matrix(rows, s.length, q1.data);
  for (let i = 0; i < rows; i++) s.forEach((x, j) => scaled.data[i * s.length + j] *= x);
  return multiply(scaled, transpose(q2)).data;
}

/** σ_max by f64 power iteration on WᵀW (for matrices with a clear top gap). */
function powerNorm(w: Matrix, iterations = 100): number {
  let v = new Float64Array(w.cols).fill(1);
  let sigma = 0;
  for (let it = 0; it < iterations; it++) {
    const wv = multiply(w, matrix(w.cols, 1, v));
    sigma = frobenius(wv);
    const z = multiply(transpose(w), wv).data;
    const n = Math.sqrt(z.reduce((s, x) => s + x * x, 0));
    v = z.map((x) => x / n);
  }
  return sigma;
}

Deno.test("baseNorms: exact Frobenius; spectral norm against dense SVD and known spectra", async () => {
  const next = rng(15);
  const dir = await Deno.makeTempDir();
  try {
    const tail = Array.from({ length: 40 }, (_, i) => 0.5 / (i + 1));
    const random = (n: number) => Float64Array.from({ length: n }, next);
    const cases: WeightCase[] = [
      { name: "f32", dtype: "F32", rows: 20, cols: 13, values: random(260) },
      { name: "f16", dtype: "F16", rows: 31, cols: 17, values: random(527) },
      { name: "bf16", dtype: "BF16", rows: 9, cols: 40, values: random(360) },
      // Wider than the Lanczos step limit: stops on its residual test.
      {
        name: "known",
        dtype: "F32",
        rows: 200,
        cols: 360,
        values: withSpectrum(200, 360, [3, 1.5, ...tail], next),
      },
      {
        name: "close_pair",
        dtype: "F32",
        rows: 150,
        cols: 400,
        values: withSpectrum(150, 400, [1, 0.99999, ...tail], next),
      },
      {
        name: "known_f16",
        dtype: "F16",
        rows: 300,
        cols: 700,
        values: withSpectrum(300, 700, [2, 1, ...tail], next),
      },
    ];
    const weights = await writeWeights(dir, cases);
    await using backend = await createCpuBackend({ workers: 0 });
    const norms = await backend.baseNorms(weights.map((w) => w.ref), {
      frobenius: true,
      spectral: true,
    });
    weights.forEach(({ w }, i) => {
      const name = cases[i].name;
      assertRelClose(
        norms[i].frobenius!,
        Math.sqrt(w.data.reduce((s, x) => s + x * x, 0)),
        1e-13,
        name,
      );
      if (w.rows <= 40) assertRelClose(norms[i].spectral!, svd(w).s[0], 1e-4, name);
    });
    assertRelClose(norms[3].spectral!, 3, 1e-4, "known σ_max");
    assertRelClose(norms[4].spectral!, 1, 1e-4, "nearly degenerate top pair");
    assertRelClose(norms[5].spectral!, powerNorm(weights[5].w), 1e-4, "F16 with a gap");
    const only = await backend.baseNorms([weights[0].ref], { frobenius: false, spectral: true });
    assertEquals(only, [{ spectral: norms[0].spectral }]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("baseNorms: Frobenius alone is summed in chunks; exact for weights of several chunks", async () => {
  const next = rng(17);
  const dir = await Deno.makeTempDir();
  try {
    const random = (n: number) => Float64Array.from({ length: n }, next);
    // 1 MiB chunks: F16 800 × 700 and F32 500 × 600 take two each, BF16 3 × 5 one.
    const cases: WeightCase[] = [
      { name: "f16", dtype: "F16", rows: 800, cols: 700, values: random(560000) },
      { name: "f32", dtype: "F32", rows: 500, cols: 600, values: random(300000) },
      { name: "bf16", dtype: "BF16", rows: 3, cols: 5, values: random(15) },
    ];
    const weights = await writeWeights(dir, cases);
    for (const workers of [0, 2]) {
      await using backend = await createCpuBackend({ workers, inlineWork: 0 });
      const norms = await backend.baseNorms(weights.map((w) => w.ref), {
        frobenius: true,
        spectral: false,
      });
      weights.forEach(({ w }, i) => {
        assertEquals(Object.keys(norms[i]), ["frobenius"]);
        const exact = Math.sqrt(w.data.reduce((s, x) => s + x * x, 0));
        assertRelClose(norms[i].frobenius!, exact, 1e-13, `${cases[i].name}, ${workers} workers`);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("subspaceScales: |uᵢᵀ·W·vᵢ| against a dense product; shape mismatch names both shapes", async () => {
  const next = rng(16);
  const dir = await Deno.makeTempDir();
  try {
    const layer = makeLayer({ out: 24, rank: 5, inFlat: 4 * 9, dtype: "F16" }, next);
    const [{ ref, w }] = await writeWeights(dir, [
      {
        name: "w",
        dtype: "F16",
        rows: 24,
        cols: 36,
        values: Float64Array.from({ length: 864 }, next),
      },
    ]);
    await using backend = await createCpuBackend({ workers: 0 });
    const [d] = await backend.decompose([layer.factors]);
    const [scales] = await backend.subspaceScales([{
      weight: ref,
      factors: layer.factors,
      decomposition: d,
    }]);
    const { u, v } = singularVectors(layer, d);
    const wv = multiply(w, v), top = svd(w).s[0];
    assertEquals(scales.length, 5);
    for (let i = 0; i < 5; i++) {
      let s = 0;
      for (let r = 0; r < 24; r++) s += u.data[r * 5 + i] * wv.data[r * 5 + i];
      assert(Math.abs(scales[i] - Math.abs(s)) < 1e-6 * top, `dimension ${i}`);
    }
    const bad: BaseWeightRef = { ...ref, rows: 12, cols: 72 };
    await assertRejects(
      () => backend.subspaceScales([{ weight: bad, factors: layer.factors, decomposition: d }]),
      BackendError,
      "is 12×72 but the layer's ΔW is 24×36",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------ conformance

interface InputLayer {
  base: string;
  rank: number;
  alpha: number;
  out: number;
  in_flat: number;
  sv: number[];
}

async function loraLayers(file: string, names?: string[]) {
  const inputs = JSON.parse(await Deno.readTextFile(new URL("cases/inputs.json", FIXTURES)));
  const layers: Record<string, InputLayer> = inputs[file].layers;
  await using lora = await SafetensorsFile.open(new URL(file, FIXTURES).pathname);
  const out: { name: string; base: string; sv: number[]; factors: LowRankFactors }[] = [];
  for (const name of names ?? Object.keys(layers)) {
    const l = layers[name];
    const read = async (key: string): Promise<FloatData> => ({
      dtype: lora.info(key).dtype as FloatDType,
      bytes: await lora.readBytes(key),
    });
    out.push({
      name,
      base: l.base,
      sv: l.sv,
      factors: {
        up: await read(`${name}.lora_up.weight`),
        down: await read(`${name}.lora_down.weight`),
        out: l.out,
        rank: l.rank,
        inFlat: l.in_flat,
        scale: l.alpha / l.rank,
      },
    });
  }
  return out;
}

Deno.test("conformance: singular values of the fixture LoRAs match inputs.json", async () => {
  await using backend = await createCpuBackend({ workers: 0 });
  for (
    const file of [
      "microD_r16_fp32.safetensors",
      "microB-locon-r8c4.safetensors",
      "microC_r8_bf16.safetensors",
    ]
  ) {
    const layers = await loraLayers(file);
    const ds = await backend.decompose(layers.map((l) => l.factors));
    layers.forEach(({ name, sv }, i) => {
      assertEquals(ds[i].sigma.length, sv.length, name);
      sv.forEach((s, j) => {
        if (s === 0) assertEquals(ds[i].sigma[j], 0, `${name} σ${j}`);
        else assertRelClose(ds[i].sigma[j], s, 1e-6, `${name} σ${j}`); // sv has 7 digits
      });
    });
  }
});

Deno.test("conformance: base norms of the micro SDXL match base_norms.json", async () => {
  const expected: Record<string, { fro: number; spectral: number; rows?: [number, number] }> = JSON
    .parse(await Deno.readTextFile(new URL("cases/base_norms.json", FIXTURES)));
  const path = new URL("micro_sdxl_base.safetensors", FIXTURES).pathname;
  await using base = await SafetensorsFile.open(path);
  // Every 100th entry, plus q/k/v row blocks of a CLIP-G in_proj_weight.
  const keys = Object.keys(expected).filter((k, i) =>
    i % 100 === 0 || k.includes("resblocks.7.attn.in_proj_weight#")
  );
  const refs = keys.map((key): BaseWeightRef => {
    const name = key.split("#")[0];
    const info = base.info(name);
    const rows = expected[key].rows ?? [0, info.shape[0]];
    return {
      path,
      dtype: info.dtype as FloatDType,
      offset: base.byteRange(name, { rows }).offset,
      rows: rows[1] - rows[0],
      cols: info.shape.slice(1).reduce((a, b) => a * b, 1),
    };
  });
  assert(keys.length >= 10 && keys.filter((k) => k.includes("#")).length >= 3);
  await using backend = await createCpuBackend({ workers: 0 });
  const norms = await backend.baseNorms(refs, { frobenius: true, spectral: true });
  keys.forEach((key, i) => {
    assertRelClose(norms[i].frobenius!, expected[key].fro, 1e-6, key);
    assertRelClose(norms[i].spectral!, expected[key].spectral, 1e-4, key);
  });
});

// ------------------------------------------------------------------ workers

async function everything(
  backend: Backend,
  layers: LowRankFactors[],
  weights: BaseWeightRef[],
  bases: BaseWeightRef[],
  oneThread: boolean,
) {
  // Layers stream out in order from one thread (decompositions, rebuilds; weights go largest first).
  const ds = await streamed<Decomposition>((o) => backend.decompose(layers, o), {
    what: "decompose",
    inOrder: oneThread,
  });
  const scales = await streamed<Float64Array>(
    (o) =>
      backend.subspaceScales(
        layers.map((factors, i) => ({ weight: bases[i], factors, decomposition: ds[i] })),
        o,
      ),
    { what: "subspaceScales" },
  );
  const rebuilt = await streamed<RebuiltFactors>(
    (o) =>
      backend.rebuild(
        layers.map((factors, i) => ({
          factors,
          decomposition: ds[i],
          keep: Array.from(ds[i].sigma.keys()).filter((j) => j % 2 === 0),
          rescale: 1.25,
          dtype: (["F16", "BF16", "F32", undefined] as const)[i % 4],
        })),
        o,
      ),
    { what: "rebuild", inOrder: oneThread },
  );
  const norms = await streamed<BaseNorms>(
    (o) => backend.baseNorms(weights, { frobenius: true, spectral: true }, o),
    { what: "baseNorms" },
  );
  return { ds, scales, rebuilt, norms };
}

Deno.test("results are bit-identical on the calling thread and on 1 or 2 workers, and stream out one by one", async () => {
  const lora = await loraLayers("microB-locon-r8c4.safetensors");
  const layers = lora.map((l) => l.factors);
  const path = new URL("micro_sdxl_base.safetensors", FIXTURES).pathname;
  await using base = await SafetensorsFile.open(path);
  const bases = lora.map(({ base: name, factors: f }): BaseWeightRef => ({
    path,
    dtype: "F16",
    offset: base.byteRange(name).offset,
    rows: f.out,
    cols: f.inFlat,
  }));
  const weights = base.tensors
    .filter((t) => t.shape.length >= 2 && t.dtype === "F16")
    .slice(0, 40)
    .map((t): BaseWeightRef => ({
      path,
      dtype: "F16",
      offset: base.byteRange(t.name).offset,
      rows: t.shape[0],
      cols: t.shape.slice(1).reduce((a, b) => a * b, 1),
    }));
  const results = [];
  for (const workers of [0, 1, 2]) {
    await using backend = await createCpuBackend({ workers, inlineWork: 0 });
    let calls = 0;
    await backend.decompose(layers, {
      onProgress: (done, total) => assertEquals([done, total], [++calls, layers.length]),
    });
    assertEquals(calls, layers.length);
    results.push(await everything(backend, layers, weights, bases, workers < 2));
  }
  assertEquals(results[1], results[0]);
  assertEquals(results[2], results[0]);
});

Deno.test("bad input and a closed backend raise one-line errors", async () => {
  const next = rng(17);
  const layer = makeLayer({ out: 4, rank: 2, inFlat: 3 }, next).factors;
  const backend = await createCpuBackend({ workers: 1, inlineWork: 0 });
  try {
    await assertRejects(
      () =>
        backend.decompose([layer, { ...layer, up: { dtype: "F16", bytes: new Uint8Array(3) } }]),
      BackendError,
      "decompose: layer 1: up has 3 bytes, expected 16 (F16 4×2)",
    );
    const [d] = await backend.decompose([layer]);
    await assertRejects(
      () => backend.rebuild([{ factors: layer, decomposition: d, keep: [1, 0], rescale: 1 }]),
      BackendError,
      "keep must be ascending",
    );
    const missing: BaseWeightRef = {
      path: "/nonexistent/base.safetensors",
      dtype: "F16",
      offset: 8,
      rows: 2,
      cols: 2,
    };
    await assertRejects(
      () => backend.baseNorms([missing], { frobenius: true, spectral: false }),
      SafetensorsError,
      "/nonexistent/base.safetensors: cannot open",
    );
  } finally {
    await backend.close();
  }
  await assertRejects(() => backend.decompose([layer]), BackendError, "closed");
});

Deno.test("an aborted call drops the jobs not started and rejects with the signal's reason", async () => {
  const next = rng(41);
  const layers = Array.from(
    { length: 96 },
    () => makeLayer({ out: 48, rank: 8, inFlat: 40 }, next).factors,
  );
  for (const workers of [0, 1, 2]) {
    await using backend = await createCpuBackend({ workers, inlineWork: workers ? 0 : Infinity });
    // Aborted before the call: nothing runs.
    let calls = 0;
    const reason = new Error("stop");
    await assertRejects(
      () =>
        backend.decompose(layers, {
          signal: AbortSignal.abort(reason),
          onProgress: () => calls++,
        }),
      Error,
      "stop",
    );
    assertEquals(calls, 0);
    // Aborted after the first item: the call rejects before finishing every item.
    const abort = new AbortController();
    let done = 0;
    await assertRejects(
      () =>
        backend.decompose(layers, {
          signal: abort.signal,
          onProgress: (d) => {
            done = d;
            abort.abort(reason);
          },
        }),
      Error,
      "stop",
    );
    assert(done < layers.length, `${workers} workers: ${done} of ${layers.length} ran`);
    // The backend still works afterwards.
    assertEquals((await backend.decompose(layers.slice(0, 3))).length, 3);
  }
});

Deno.test("closing a busy backend rejects its calls at once and resolves once its workers are gone", async () => {
  const next = rng(43);
  const layers = Array.from(
    { length: 64 },
    () => makeLayer({ out: 96, rank: 16, inFlat: 80 }, next).factors,
  );
  const backend = await createCpuBackend({ workers: 2, inlineWork: 0 });
  let progress = 0;
  const working = backend.decompose(layers, { onProgress: (d) => progress = d });
  await new Promise((r) => setTimeout(r, 0));
  const closing = backend.close();
  await assertRejects(() => working, BackendError, "closed while working");
  await closing;
  assert(progress < layers.length, `${progress} of ${layers.length} done before the close`);
  await assertRejects(() => backend.decompose(layers.slice(0, 1)), BackendError, "closed");
  await backend.close(); // a second close is harmless
});
