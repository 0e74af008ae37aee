/**
 * The WebGPU backend against float64 facts and the CPU backend, on whatever
 * adapter this machine has (llvmpipe/lavapipe in CI). Without an adapter
 * every test is reported as ignored, with the reason printed.
 */

import { BackendError } from "../src/errors.ts";
import { collectLogs } from "../src/log.ts";
import type {
  Backend,
  BaseNorms,
  BaseWeightRef,
  Decomposition,
  LowRankFactors,
  RebuiltFactors,
} from "../src/linalg/backend.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { matrix, multiply, qr, svd } from "./reference/matrix.ts";
import { createGpuBackend } from "../src/linalg/gpu/backend.ts";
import { requestAdapter } from "../src/linalg/gpu/device.ts";
import { selectBackend } from "../src/linalg/select_backend.ts";
import { decodeFloats, encodeFloats, type FloatDType } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { assert, assertEquals, assertRejects, assertRelClose } from "./assert.ts";
import { runDeno } from "./webgpu_child.ts";
import { streamed } from "./streamed.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);

/**
 * Under `deno test` this module touches no WebGPU: it runs itself with `deno run` (where the tests
 * below run in order on the child's main thread, see webgpu_child.ts) and reports each test's
 * outcome there as its own.
 */
const CHILD = import.meta.main;
const RESULTS = "gpu_backend_test results: ";
const adapter = CHILD ? await requestAdapter() : null;
const results = CHILD ? undefined : await runInChild();
const ignore = CHILD ? adapter === null : results === null;
if (ignore) {
  console.log("gpu_backend_test: no WebGPU adapter on this machine; GPU tests are skipped");
}
const cases: [string, () => Promise<void>][] = [];

/** A GPU test: ignored (not passed) without an adapter. */
function gpuTest(name: string, fn: () => Promise<void>): void {
  if (CHILD) {
    cases.push([name, fn]);
    return;
  }
  Deno.test({
    name,
    ignore,
    fn: () => {
      const outcome = results!.get(name);
      if (outcome === undefined) throw new Error(`the child did not run '${name}'`);
      if (outcome !== null) throw new Error(`in the child: ${outcome}`);
    },
  });
}

/** Each test's failure (null: passed) in a child run, or null when the child has no adapter. */
async function runInChild(): Promise<Map<string, string | null> | null> {
  const { code, stdout, stderr } = await runDeno(["run", "-A", new URL(import.meta.url).pathname]);
  const line = stdout.find((l) => l.startsWith(RESULTS));
  if (code !== 0 || line === undefined) {
    throw new Error(`gpu_backend_test child exited with ${code}:\n${stderr.join("\n")}`);
  }
  const parsed = JSON.parse(line.slice(RESULTS.length));
  return parsed === null ? null : new Map(Object.entries(parsed));
}

let gpuBackend: Promise<Backend> | undefined;
let cpuBackend: Promise<Backend> | undefined;
const gpu = () => gpuBackend ??= createGpuBackend({ adapter: adapter! });
const cpu = () => cpuBackend ??= createCpuBackend({ workers: 0 });

// ---------------------------------------------------------------- helpers

/** Deterministic uniform numbers in [-0.5, 0.5). */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

function layerOf(
  b: Float64Array,
  a: Float64Array,
  shape: { out: number; rank: number; inFlat: number; scale: number },
  dtype: FloatDType,
): LowRankFactors {
  return {
    up: { dtype, bytes: encodeFloats(b, dtype) },
    down: { dtype, bytes: encodeFloats(a, dtype) },
    ...shape,
  };
}

function randomLayer(
  out: number,
  rank: number,
  inFlat: number,
  dtype: FloatDType,
  seed: number,
): LowRankFactors {
  const rnd = random(seed);
  const b = Float64Array.from({ length: out * rank }, rnd);
  // Decaying row scales give A (and ΔW) a spread spectrum.
  const a = Float64Array.from({ length: rank * inFlat }, (_, i) => rnd() * 0.7 ** (i / inFlat | 0));
  return layerOf(b, a, { out, rank, inFlat, scale: 0.5 }, dtype);
}

const decode = (d: { dtype: FloatDType; bytes: Uint8Array }) =>
  decodeFloats(d.bytes, d.dtype, Float64Array);

/** scale·B·A in float64. */
function delta(layer: LowRankFactors): Float64Array {
  const p = multiply(
    matrix(layer.out, layer.rank, decode(layer.up)),
    matrix(layer.rank, layer.inFlat, decode(layer.down)),
  );
  return p.data.map((x) => x * layer.scale);
}

/** U = B·T_B and V = Aᵀ·T_A (as out × k and in × k). */
function singularVectors(layer: LowRankFactors, d: Decomposition) {
  const k = d.sigma.length, r = layer.rank;
  const u = multiply(matrix(layer.out, r, decode(layer.up)), matrix(r, k, d.upTransform));
  const at = multiply(
    matrix(layer.inFlat, r, transposeData(decode(layer.down), r, layer.inFlat)),
    matrix(r, k, d.downTransform),
  );
  return { u, v: at };
}

function transposeData(x: Float64Array, rows: number, cols: number): Float64Array {
  const t = new Float64Array(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = x[i * cols + j];
  return t;
}

function frobenius(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s);
}

/** The accuracy target against the CPU backend. */
function assertSigmaAgrees(gpuSigma: Float64Array, cpuSigma: Float64Array, what: string): void {
  assertEquals(gpuSigma.length, cpuSigma.length, `${what}: k`);
  const top = cpuSigma[0] ?? 0;
  cpuSigma.forEach((s, i) => {
    if (s >= 1e-3 * top && s > 0) assertRelClose(gpuSigma[i], s, 1e-4, `${what} σ${i}`);
    else {
      assert(Math.abs(gpuSigma[i] - s) <= 1e-7 * top, `${what} σ${i}: ${gpuSigma[i]} vs ${s}`);
    }
  });
}

// ---------------------------------------------------------------- decompose

gpuTest("gpu decompose: SVD identity, orthonormal U and V, σ as the CPU backend", async () => {
  const rnd = random(7);
  // Exactly rank 2 factors of stored rank 6 (B's columns repeat).
  const b2 = Float64Array.from({ length: 30 * 6 }, (_, i) => (i % 6 < 2 ? rnd() : 0));
  for (let i = 0; i < 30; i++) for (let j = 2; j < 6; j++) b2[i * 6 + j] = b2[i * 6 + (j % 2)];
  const layers: [string, LowRankFactors][] = [
    ["F16 conv 3×3", randomLayer(40, 8, 6 * 9, "F16", 1)],
    ["F32 tall", randomLayer(300, 20, 33, "F32", 2)],
    ["BF16 r > min(out, in)", randomLayer(12, 16, 10, "BF16", 3)],
    ["F64", randomLayer(70, 4, 50, "F64", 4)],
    ["F16 wide", randomLayer(16, 8, 2600, "F16", 5)],
    [
      "F16 zero",
      layerOf(new Float64Array(20 * 4), new Float64Array(4 * 30), {
        out: 20,
        rank: 4,
        inFlat: 30,
        scale: 1,
      }, "F16"),
    ],
    [
      "F32 rank-deficient",
      layerOf(b2, Float64Array.from({ length: 6 * 25 }, rnd), {
        out: 30,
        rank: 6,
        inFlat: 25,
        scale: 0.25,
      }, "F32"),
    ],
  ];
  const factors = layers.map(([, l]) => l);
  const got = await streamed<Decomposition>((o) => gpu().then((g) => g.decompose(factors, o)));
  const want = await (await cpu()).decompose(factors);
  layers.forEach(([what, layer], n) => {
    const d = got[n];
    const k = Math.min(layer.out, layer.inFlat, layer.rank);
    assertEquals(d.sigma.length, k, `${what}: k`);
    for (let i = 1; i < k; i++) assert(d.sigma[i] <= d.sigma[i - 1], `${what}: descending`);
    assertSigmaAgrees(d.sigma, want[n].sigma, what);
    // U·diag(σ)·Vᵀ = scale·B·A.
    const { u, v } = singularVectors(layer, d);
    const dw = delta(layer);
    const rebuilt = new Float64Array(dw.length);
    for (let i = 0; i < layer.out; i++) {
      for (let j = 0; j < layer.inFlat; j++) {
        let s = 0;
        for (let c = 0; c < k; c++) s += u.data[i * k + c] * d.sigma[c] * v.data[j * k + c];
        rebuilt[i * layer.inFlat + j] = s;
      }
    }
    const err = frobenius(rebuilt.map((x, i) => x - dw[i]));
    assert(err <= 1e-6 * Math.max(frobenius(dw), 1e-30), `${what}: ‖UΣVᵀ − ΔW‖ = ${err}`);
    // Orthonormal columns for nonzero σ.
    for (const [name, m, rows] of [["U", u, layer.out], ["V", v, layer.inFlat]] as const) {
      for (let a = 0; a < k; a++) {
        for (let c = a; c < k; c++) {
          if (!(d.sigma[a] > 0 && d.sigma[c] > 0)) continue;
          let dot = 0;
          for (let i = 0; i < rows; i++) dot += m.data[i * k + a] * m.data[i * k + c];
          assert(
            Math.abs(dot - (a === c ? 1 : 0)) < 1e-6,
            `${what}: ${name}ᵀ${name}[${a},${c}] = ${dot}`,
          );
        }
      }
    }
  });
  assertEquals(Array.from(got[5].sigma), [0, 0, 0, 0], "zero layer");
  assert(got[6].sigma[1] > 0 && got[6].sigma[2] === 0, "rank-deficient layer has rank 2");
});

gpuTest("gpu decompose: bad factor sizes are a BackendError", async () => {
  const bad = { ...randomLayer(4, 2, 3, "F16", 9), out: 5 };
  await assertRejects(() => gpu().then((g) => g.decompose([bad])), BackendError, "up has");
});

// ------------------------------------------------- conformance (microA, base norms)

interface InputLayer {
  rank: number;
  alpha: number;
  out: number;
  in_flat: number;
  base: string;
  sv: number[];
}

async function microA(): Promise<
  { names: string[]; layers: LowRankFactors[]; info: InputLayer[] }
> {
  const inputs = JSON.parse(await Deno.readTextFile(new URL("cases/inputs.json", FIXTURES)));
  const table: Record<string, InputLayer> = inputs["microA_r8_te.safetensors"].layers;
  await using f = await SafetensorsFile.open(
    new URL("microA_r8_te.safetensors", FIXTURES).pathname,
  );
  const names = Object.keys(table).sort();
  const layers: LowRankFactors[] = [];
  for (const name of names) {
    const t = table[name];
    const up = f.info(`${name}.lora_up.weight`), down = f.info(`${name}.lora_down.weight`);
    layers.push({
      up: { dtype: up.dtype as FloatDType, bytes: await f.readBytes(up.name) },
      down: { dtype: down.dtype as FloatDType, bytes: await f.readBytes(down.name) },
      out: t.out,
      rank: t.rank,
      inFlat: t.in_flat,
      scale: t.alpha / t.rank,
    });
  }
  return { names, layers, info: names.map((n) => table[n]) };
}

/** Where a base name of the conformance data (`key` or `key#c`) lies in the micro base. */
function baseRef(base: SafetensorsFile, name: string): BaseWeightRef {
  const [key, chunk] = name.split("#");
  const t = base.info(key);
  const rows = t.shape[0], cols = t.shape.slice(1).reduce((a, b) => a * b, 1);
  if (chunk === undefined) {
    return {
      path: base.path,
      dtype: t.dtype as FloatDType,
      offset: base.byteRange(key).offset,
      rows,
      cols,
    };
  }
  const n = rows / 3, c = Number(chunk);
  const { offset } = base.byteRange(key, { rows: [c * n, (c + 1) * n] });
  return { path: base.path, dtype: t.dtype as FloatDType, offset, rows: n, cols };
}

/** Ranks that a threshold recipe keeps: #{i : log10(σᵢ) − log10(ref) ≥ thr}. */
function ranks(sigma: Float64Array, ref: number, thr: number): number {
  return sigma.filter((s) => s > 0 && Math.log10(s) - Math.log10(ref) >= thr).length;
}

gpuTest("gpu conformance: microA σ, base norms and the ranks of M01 and M03", async () => {
  const { names, layers, info } = await microA();
  const got = await (await gpu()).decompose(layers);
  const want = await (await cpu()).decompose(layers);
  names.forEach((name, n) => {
    assertSigmaAgrees(got[n].sigma, want[n].sigma, name);
    const sv = info[n].sv;
    sv.forEach((s, i) => {
      if (s >= 1e-3 * sv[0]) assertRelClose(got[n].sigma[i], s, 1e-3, `${name} sv${i}`);
    });
  });
  await using base = await SafetensorsFile.open(
    new URL("micro_sdxl_base.safetensors", FIXTURES).pathname,
  );
  const refs = info.map((t) => baseRef(base, t.base));
  const norms = await (await gpu()).baseNorms(refs, { frobenius: true, spectral: false });
  const expectedNorms = JSON.parse(
    await Deno.readTextFile(new URL("cases/base_norms.json", FIXTURES)),
  );
  info.forEach((t, n) => {
    assertRelClose(norms[n].frobenius!, expectedNorms[t.base].fro, 1e-6, `${t.base} fro`);
  });
  const cases: [string, (n: number) => number, number][] = [
    ["M01_default_vv", (n) => norms[n].frobenius!, -3.5],
    ["M03_spn_lora_thr", (n) => got[n].sigma[0], -0.7],
  ];
  for (const [id, ref, thr] of cases) {
    const c = JSON.parse(await Deno.readTextFile(new URL(`cases/${id}.json`, FIXTURES)));
    const output = c.outputs[0];
    const differences = output.port_notes.expected_differences;
    names.forEach((name, n) => {
      const expected = name in differences
        ? differences[name].port
        : (output.layers[name]?.rank ?? 0);
      assertEquals(ranks(got[n].sigma, ref(n), thr), expected, `${id} ${name} rank`);
      assertEquals(
        ranks(got[n].sigma, ref(n), thr),
        ranks(want[n].sigma, ref(n), thr),
        `${id} ${name}: GPU and CPU ranks`,
      );
    });
  }
});

gpuTest("gpu base norms: conformance spectral norms (convs, q/k/v row blocks)", async () => {
  const expected: Record<string, { fro: number; spectral: number }> = JSON.parse(
    await Deno.readTextFile(new URL("cases/base_norms.json", FIXTURES)),
  );
  const names = Object.keys(expected).sort();
  // Every 12th entry: linears, 1×1 and 3×3 convs, in_proj row blocks.
  const picked = names.filter((n, i) => i % 12 === 0 || n.endsWith("#1") && i % 4 === 0);
  await using base = await SafetensorsFile.open(
    new URL("micro_sdxl_base.safetensors", FIXTURES).pathname,
  );
  const refs = picked.map((n) => baseRef(base, n));
  assert(refs.some((r) => r.cols > r.rows * 2) && picked.some((n) => n.includes("#")));
  const norms = await streamed<BaseNorms>((o) =>
    gpu().then((g) => g.baseNorms(refs, { frobenius: true, spectral: true }, o))
  );
  picked.forEach((n, i) => {
    assertRelClose(norms[i].frobenius!, expected[n].fro, 1e-6, `${n} fro`);
    assertRelClose(norms[i].spectral!, expected[n].spectral, 1e-4, `${n} spectral`);
  });
});

// ---------------------------------------------------------------- base norms

gpuTest("gpu base norms: known spectra, every dtype, row blocks, multi-piece weights", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpu_norms_" });
  try {
    const rnd = random(11);
    const orthonormal = (n: number, k: number) =>
      qr(matrix(n, k, Float64Array.from({ length: n * k }, rnd))).q;
    /** U·diag(s)·Vᵀ with the given singular values. */
    const withSpectrum = (rows: number, cols: number, s: number[]) => {
      const k = s.length;
      const u = orthonormal(rows, k), v = orthonormal(cols, k);
      const w = new Float64Array(rows * cols);
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          let x = 0;
          for (let c = 0; c < k; c++) x += u.data[i * k + c] * s[c] * v.data[j * k + c];
          w[i * cols + j] = x;
        }
      }
      return w;
    };
    const spectrum = (
      k: number,
      top: number[],
    ) => [...top, ...Array.from({ length: k - top.length }, (_, i) => 0.9 ** i)];
    const cases = [
      { name: "f32", dtype: "F32", rows: 60, cols: 90, s: spectrum(60, [5, 4.95]) },
      { name: "f16", dtype: "F16", rows: 48, cols: 32, s: spectrum(32, [3]) },
      { name: "bf16", dtype: "BF16", rows: 33, cols: 70, s: spectrum(33, [2, 1.99]) },
      { name: "f64", dtype: "F64", rows: 20, cols: 25, s: spectrum(20, [1.5]) },
      // 700 rows of a wide F16 matrix: several row pieces; rank 5.
      { name: "tall", dtype: "F16", rows: 700, cols: 130, s: [9, 7, 5, 3, 1] },
      { name: "zero", dtype: "F32", rows: 10, cols: 12, s: [] as number[] },
    ] as const;
    const values = cases.map((c) =>
      c.s.length ? withSpectrum(c.rows, c.cols, [...c.s]) : new Float64Array(c.rows * c.cols)
    );
    const path = `${dir}/w.safetensors`;
    await writeSafetensors(
      path,
      cases.map((c, i) => ({
        name: c.name,
        dtype: c.dtype,
        shape: [c.rows, c.cols],
        data: encodeFloats(values[i], c.dtype),
      })),
    );
    await using file = await SafetensorsFile.open(path);
    const refs: BaseWeightRef[] = cases.map((c) => ({
      path,
      dtype: c.dtype,
      offset: file.byteRange(c.name).offset,
      rows: c.rows,
      cols: c.cols,
    }));
    // Rows 100..400 of the tall weight, as q/k/v chunks are read.
    refs.push({
      ...refs[4],
      offset: file.byteRange("tall", { rows: [100, 400] }).offset,
      rows: 300,
    });
    const stored = async (ref: BaseWeightRef) => {
      const bytes = await file.readRange(
        ref.offset,
        ref.rows * ref.cols * (ref.dtype === "F64" ? 8 : ref.dtype === "F32" ? 4 : 2),
      );
      return matrix(ref.rows, ref.cols, decodeFloats(bytes, ref.dtype, Float64Array));
    };
    const norms = await (await gpu()).baseNorms(refs, { frobenius: true, spectral: true });
    const justFro = await (await gpu()).baseNorms(refs, { frobenius: true, spectral: false });
    for (let i = 0; i < refs.length; i++) {
      // Exact values of the matrix as stored (after F16/BF16 rounding).
      const w = await stored(refs[i]);
      const fro = frobenius(w.data);
      const top = w.rows * w.cols === 0 ? 0 : svd(w).s[0];
      const what = `weight ${i} (${refs[i].dtype} ${refs[i].rows}×${refs[i].cols})`;
      if (fro === 0) {
        assertEquals([norms[i].frobenius, norms[i].spectral], [0, 0], what);
        continue;
      }
      assertRelClose(norms[i].frobenius!, fro, 1e-6, `${what} fro`);
      assertEquals(justFro[i].frobenius, norms[i].frobenius, `${what}: fro alone`);
      assertEquals(justFro[i].spectral, undefined);
      assertRelClose(norms[i].spectral!, top, 1e-4, `${what} spectral`);
    }
    // Results do not depend on batching.
    const alone = await (await gpu()).baseNorms([refs[1]], { frobenius: true, spectral: true });
    assertEquals(alone[0], norms[1]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------- rebuild, subspace

gpuTest("gpu rebuild: up·down·scale is the kept part of ΔW, as on the CPU", async () => {
  const layers = [
    randomLayer(40, 8, 6 * 9, "F16", 21),
    randomLayer(50, 6, 20, "BF16", 22),
    { ...randomLayer(30, 5, 70, "F32", 23), scale: -0.3 },
  ];
  const d = await (await gpu()).decompose(layers);
  const requests = layers.map((factors, n) => ({
    factors,
    decomposition: d[n],
    keep: n === 0 ? [0, 2, 3, 7] : n === 1 ? [] : [0, 1, 2, 3, 4],
    rescale: n === 0 ? 0.625 : 1,
  }));
  // The layer that keeps nothing comes out too.
  const got = (await streamed<RebuiltFactors>((o) => gpu().then((g) => g.rebuild(requests, o))))
    .map(f32Factors);
  const want = (await (await cpu()).rebuild(requests)).map(f32Factors);
  // Asked in F16, the GPU's factors are its F32 ones rounded as encodeFloats rounds.
  const halves = await (await gpu()).rebuild(
    requests.map((r) => ({ ...r, dtype: "F16" as const })),
  );
  halves.forEach((h, n) => {
    assertEquals(h.up, { dtype: "F16", bytes: encodeFloats(got[n].up, "F16") });
    assertEquals(h.down, { dtype: "F16", bytes: encodeFloats(got[n].down, "F16") });
  });
  requests.forEach((req, n) => {
    const { factors: l, keep } = req;
    const kept = keep.length;
    assertEquals([got[n].up.length, got[n].down.length], [l.out * kept, kept * l.inFlat]);
    if (kept === 0) return;
    const product = (f: { up: Float32Array; down: Float32Array }) =>
      multiply(matrix(l.out, kept, f.up), matrix(kept, l.inFlat, f.down)).data.map((x) =>
        x * l.scale
      );
    // Σ_kept rescale·σᵢ·uᵢ·vᵢᵀ in float64.
    const { u, v } = singularVectors(l, d[n]);
    const k = d[n].sigma.length;
    const expected = new Float64Array(l.out * l.inFlat);
    for (let i = 0; i < l.out; i++) {
      for (let j = 0; j < l.inFlat; j++) {
        let s = 0;
        for (const c of keep) {
          s += u.data[i * k + c] * req.rescale * d[n].sigma[c] * v.data[j * k + c];
        }
        expected[i * l.inFlat + j] = s;
      }
    }
    const norm = frobenius(expected);
    const g = product(got[n]), c = product(want[n]);
    assert(frobenius(g.map((x, i) => x - expected[i])) <= 1e-6 * norm, `layer ${n}: identity`);
    assert(frobenius(g.map((x, i) => x - c[i])) <= 1e-6 * norm, `layer ${n}: GPU vs CPU`);
    // The singular values are split evenly: ‖up[:, c]‖ = ‖down[c, :]‖.
    for (let c = 0; c < kept; c++) {
      let su = 0, sd = 0;
      for (let i = 0; i < l.out; i++) su += got[n].up[i * kept + c] ** 2;
      for (let j = 0; j < l.inFlat; j++) sd += got[n].down[c * l.inFlat + j] ** 2;
      assertRelClose(Math.sqrt(su), Math.sqrt(sd), 1e-5, `layer ${n} split ${c}`);
    }
  });
});

/** Rebuilt F32 factors as arrays. */
function f32Factors(f: RebuiltFactors): { up: Float32Array; down: Float32Array } {
  assertEquals([f.up.dtype, f.down.dtype], ["F32", "F32"]);
  return {
    up: decodeFloats(f.up.bytes, "F32", Float32Array),
    down: decodeFloats(f.down.bytes, "F32", Float32Array),
  };
}

gpuTest("gpu subspace scales: |uᵢᵀ·W·vᵢ| by brute force; shape mismatch is an error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpu_subspace_" });
  try {
    const layers = [randomLayer(40, 8, 54, "F16", 31), randomLayer(24, 16, 10, "F32", 32)];
    const rnd = random(33);
    const weights = layers.map((l) => Float64Array.from({ length: l.out * l.inFlat }, rnd));
    const dtypes = ["F16", "BF16"] as const;
    const path = `${dir}/w.safetensors`;
    await writeSafetensors(
      path,
      layers.map((l, i) => ({
        name: `w${i}`,
        dtype: dtypes[i],
        shape: [l.out, l.inFlat],
        data: encodeFloats(weights[i], dtypes[i]),
      })),
    );
    await using file = await SafetensorsFile.open(path);
    const refs: BaseWeightRef[] = layers.map((l, i) => ({
      path,
      dtype: dtypes[i],
      offset: file.byteRange(`w${i}`).offset,
      rows: l.out,
      cols: l.inFlat,
    }));
    const d = await (await gpu()).decompose(layers);
    const requests = layers.map((factors, i) => ({
      weight: refs[i],
      factors,
      decomposition: d[i],
    }));
    const got = await streamed<Float64Array>((o) =>
      gpu().then((g) => g.subspaceScales(requests, o))
    );
    const want = await (await cpu()).subspaceScales(requests);
    layers.forEach((l, n) => {
      const w = decodeFloats(encodeFloats(weights[n], dtypes[n]), dtypes[n], Float64Array);
      const { u, v } = singularVectors(l, d[n]);
      const k = d[n].sigma.length;
      assertEquals(got[n].length, k);
      for (let i = 0; i < k; i++) {
        let s = 0;
        for (let a = 0; a < l.out; a++) {
          for (let b = 0; b < l.inFlat; b++) {
            s += u.data[a * k + i] * w[a * l.inFlat + b] * v.data[b * k + i];
          }
        }
        const tol = 1e-9 * frobenius(w);
        assert(
          Math.abs(got[n][i] - Math.abs(s)) <= tol,
          `layer ${n} dim ${i}: ${got[n][i]} vs ${Math.abs(s)}`,
        );
        // The CPU backend sums this one in f32 (GPU: near-exact), hence the wider tolerance.
        assert(
          Math.abs(got[n][i] - want[n][i]) <= 1e-6 * frobenius(w),
          `layer ${n} dim ${i}: GPU vs CPU`,
        );
      }
    });
    await assertRejects(
      () => gpu().then((g) => g.subspaceScales([{ ...requests[0], weight: refs[1] }])),
      BackendError,
      "subspace scales need a 40×54 weight",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------- selection, close

gpuTest("selectBackend: auto skips a fallback adapter, gpu takes any adapter", async () => {
  const { log, records } = collectLogs();
  // Few cores: auto looks for an adapter, and places work per call on a real one.
  await using auto = await selectBackend("auto", { log, workers: 0, cores: 2 });
  const fallback = adapter!.info.isFallbackAdapter;
  assertEquals(auto.name, fallback ? "cpu" : "auto");
  assert(records.some(([level, m]) => level === "DEBUG" && m.startsWith("WebGPU adapter: ")));
  assert(records.some(([, m]) => m.startsWith("device: ")), "the choice is logged");
  // Many cores: the CPU for everything, without asking for an adapter.
  const many = collectLogs();
  await using wide = await selectBackend("auto", { log: many.log, workers: 0, cores: 16 });
  assertEquals(wide.name, "cpu");
  assert(!many.records.some(([, m]) => m.startsWith("WebGPU adapter: ")));
  // gpu: any adapter, announced; a software one with a warning.
  const forcedLogs = collectLogs();
  await using forced = await selectBackend("gpu", { log: forcedLogs.log, workers: 0 });
  assertEquals(forced.name, "webgpu");
  assert(
    forcedLogs.records.some(([level, m]) =>
      level === (fallback ? "WARNING" : "INFO") && m.startsWith("WebGPU runs on ")
    ),
  );
  await using plain = await selectBackend("cpu", { workers: 0 });
  assertEquals(plain.name, "cpu");
});

gpuTest("gpu close: later calls fail with a BackendError", async () => {
  const backend = await createGpuBackend({ adapter: adapter! });
  assert(backend.description.startsWith("WebGPU: "));
  await backend.close();
  await assertRejects(
    () => backend.decompose([randomLayer(4, 2, 3, "F16", 1)]),
    BackendError,
    "closed",
  );
  // Close the shared backends last.
  await (await gpu()).close();
  await (await cpu()).close();
});

if (CHILD) {
  const outcomes: Record<string, string | null> = {};
  for (const [name, fn] of ignore ? [] : cases) {
    try {
      await fn();
      outcomes[name] = null;
    } catch (e) {
      outcomes[name] = e instanceof Error ? e.stack ?? e.message : String(e);
    }
  }
  console.log(RESULTS + JSON.stringify(ignore ? null : outcomes));
}
