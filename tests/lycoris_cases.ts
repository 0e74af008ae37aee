/**
 * LoHa and LoKr test cases and their check through a backend, against dense references
 * computed here in f64: ΔW formed from the stored factors the way ComfyUI's
 * weight adapters form it, and its singular values by one-sided Jacobi.
 *
 * The reference follows comfyanonymous/ComfyUI `comfy/weight_adapter/loha.py`
 * at 183b377588102d00131247aec399f8b34e1122b4 ((w1a·w1b) ⊙ (w2a·w2b) · α/r,
 * r = rows of w1b, 1 without α) and `comfy/weight_adapter/lokr.py` at
 * e8f3bc5ab766ba0149ac8ba8f67c328f8bb3da7d (torch.kron(w1, w2) with w1
 * unsqueezed to [o1, i1, 1, 1] when w2 is a 4-D kernel, reshaped to the
 * weight's shape; scale α / rows of the decomposed factor's `_b`, w2's when
 * both are, else 1).
 */

import type { Backend } from "../src/linalg/backend.ts";
import { decomposeKronecker } from "../src/linalg/kronecker.ts";
import { rebuildKronecker } from "../src/linalg/kronecker_rebuild.ts";
import { type LycorisLayer, readLycorisLayers } from "../src/lora/lycoris.ts";
import { decodeFloats, type FloatDType } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import type { TensorSource } from "../src/safetensors/writer.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import {
  lohaTensors,
  lokrTensors,
  type LycorisLayerShape,
  type SyntheticLokrOptions,
} from "../src/testing/synthetic_lycoris.ts";
import { assert, assertEquals, assertRelClose } from "./assert.ts";
import { jacobiSingularValues } from "./jacobi_svd.ts";

/** A dense row-major f64 matrix. */
export interface Dense {
  readonly rows: number;
  readonly cols: number;
  readonly v: Float64Array;
}

export function product(a: Dense, b: Dense): Dense {
  const v = new Float64Array(a.rows * b.cols);
  for (let i = 0; i < a.rows; i++) {
    for (let k = 0; k < a.cols; k++) {
      const x = a.v[i * a.cols + k];
      for (let j = 0; j < b.cols; j++) v[i * b.cols + j] += x * b.v[k * b.cols + j];
    }
  }
  return { rows: a.rows, cols: b.cols, v };
}

export function frobenius(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] ** 2;
  return Math.sqrt(s);
}

export function distance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s);
}

/** The stored tensors of a file, decoded to f64, with their shapes. */
export async function tensorsOf(
  path: string,
): Promise<Map<string, { shape: number[]; v: Float64Array }>> {
  await using file = await SafetensorsFile.open(path);
  const out = new Map<string, { shape: number[]; v: Float64Array }>();
  for (const t of file.tensors) {
    const v = decodeFloats(await file.readBytes(t.name), t.dtype as FloatDType, Float64Array);
    out.set(t.name, { shape: [...t.shape], v });
  }
  return out;
}

export type Tensors = Awaited<ReturnType<typeof tensorsOf>>;

export function matrixOf(t: Tensors, name: string): Dense {
  const { shape, v } = t.get(name)!;
  return { rows: shape[0], cols: v.length / shape[0], v };
}

/** LoHa ΔW, flattened out × in·kh·kw. */
export function denseLoha(t: Tensors, name: string): Dense {
  const p1 = product(matrixOf(t, `${name}.hada_w1_a`), matrixOf(t, `${name}.hada_w1_b`));
  const p2 = product(matrixOf(t, `${name}.hada_w2_a`), matrixOf(t, `${name}.hada_w2_b`));
  const alpha = t.get(`${name}.alpha`)?.v[0];
  const scale = alpha === undefined ? 1 : alpha / t.get(`${name}.hada_w1_b`)!.shape[0];
  return { rows: p1.rows, cols: p1.cols, v: p1.v.map((x, i) => scale * x * p2.v[i]) };
}

/**
 * LoKr ΔW as torch.kron forms it on 4-D tensors: [o1, i1, 1, 1] ⊗ [o2, i2, kh, kw] is
 * [o1·o2, i1·i2, kh, kw] with entry (a·o2 + b, c·i2 + d, h, w) = w1[a, c]·w2[b, d, h, w],
 * flattened row-major. A 2-D W2 over i2·kh·kw is given its kernel from `kernel` (as the
 * reshape to the weight's shape does).
 */
export function denseLokr(t: Tensors, name: string, kernel: number): Dense {
  const factor = (w: "w1" | "w2"): { m: Dense; rank?: number } => {
    if (t.has(`${name}.lokr_${w}`)) return { m: matrixOf(t, `${name}.lokr_${w}`) };
    const a = matrixOf(t, `${name}.lokr_${w}_a`), b = matrixOf(t, `${name}.lokr_${w}_b`);
    return { m: product(a, b), rank: b.rows };
  };
  const w1 = factor("w1"), w2 = factor("w2");
  const kk = Math.max(kernel, 1) ** 2;
  const [o1, i1] = [w1.m.rows, w1.m.cols], [o2, i2] = [w2.m.rows, w2.m.cols / kk];
  const dim = w2.rank ?? w1.rank;
  const alpha = t.get(`${name}.alpha`)?.v[0];
  const scale = alpha !== undefined && dim !== undefined ? alpha / dim : 1;
  const rows = o1 * o2, inCh = i1 * i2, cols = inCh * kk;
  const v = new Float64Array(rows * cols);
  for (let a = 0; a < o1; a++) {
    for (let c = 0; c < i1; c++) {
      for (let b = 0; b < o2; b++) {
        for (let d = 0; d < i2; d++) {
          for (let hw = 0; hw < kk; hw++) {
            const x = w1.m.v[a * i1 + c] * w2.m.v[b * i2 * kk + d * kk + hw];
            v[(a * o2 + b) * cols + (c * i2 + d) * kk + hw] = scale * x;
          }
        }
      }
    }
  }
  return { rows, cols, v };
}

/** ΔW of rebuilt output factors: up·down·scale (the writer's alpha/k′ is the layer's scale). */
function outputDelta(
  up: { dtype: FloatDType; bytes: Uint8Array },
  down: { dtype: FloatDType; bytes: Uint8Array },
  rows: number,
  k: number,
  scale: number,
): Float64Array {
  const u = decodeFloats(up.bytes, up.dtype, Float64Array);
  const d = decodeFloats(down.bytes, down.dtype, Float64Array);
  const m = product({ rows, cols: k, v: u }, { rows: k, cols: d.length / k, v: d });
  return m.v.map((x) => x * scale);
}

/** Decomposes a layer and rebuilds the first `k` dimensions (all when undefined). */
async function resized(
  backend: Backend,
  layer: LycorisLayer,
  keepCount: (sigma: Float64Array) => number,
  dtype: "F16" | "F32",
): Promise<{ sigma: Float64Array; delta: Float64Array }> {
  if (layer.kind === "loha") {
    const [d] = await backend.decompose([layer.factors]);
    const keep = [...Array(keepCount(d.sigma)).keys()];
    const [f] = await backend.rebuild([
      { factors: layer.factors, decomposition: d, keep, rescale: 1, dtype },
    ]);
    return {
      sigma: d.sigma,
      delta: outputDelta(f.up, f.down, layer.out, keep.length, layer.factors.scale),
    };
  }
  const [d] = await decomposeKronecker(backend, [layer.kronecker]);
  const keep = [...Array(keepCount(d.sigma)).keys()];
  const [f] = await rebuildKronecker(backend, [
    { layer: layer.kronecker, decomposition: d, keep, rescale: 1, dtype },
  ]);
  return { sigma: d.sigma, delta: outputDelta(f.up, f.down, layer.out, keep.length, layer.scale) };
}

const LINEAR: LycorisLayerShape = { name: "lora_unet_linear", out: 24, in: 20, kernel: 0 };
const CONV: LycorisLayerShape = { name: "lora_unet_conv", out: 16, in: 8, kernel: 3 };

/** The four LoKr forms and two LoHa forms (and a LoHa whose r² exceeds the layer: dense route). */
export interface LycorisCase {
  /** What it is. */
  readonly what: string;
  /** Kernel size of the layer (0: linear). */
  readonly kernel: number;
  /** Its tensors. */
  readonly tensors: TensorSource[];
}

export const LYCORIS_CASES: readonly LycorisCase[] = [
  { what: "LoHa linear", kernel: 0, tensors: lohaTensors(LINEAR, { rank: 3, alpha: 2 }) },
  { what: "LoHa conv", kernel: 3, tensors: lohaTensors(CONV, { rank: 3, alpha: 1.5 }) },
  {
    what: "LoHa with r1·r2 > min(out, in)",
    kernel: 0,
    tensors: lohaTensors(LINEAR, { rank: 5, alpha: null }),
  },
  ...([
    ["full", "full"],
    ["full", "decomposed"],
    ["decomposed", "full"],
    ["decomposed", "decomposed"],
  ] as const).flatMap(([w1, w2]) => {
    // Different ranks tell which one the scale divides by.
    const options: SyntheticLokrOptions = { factor: 4, w1, w2, rank: 2, w1Rank: 3, alpha: 3 };
    return [
      { what: `LoKr linear, w1 ${w1}, w2 ${w2}`, kernel: 0, tensors: lokrTensors(LINEAR, options) },
      { what: `LoKr conv, w1 ${w1}, w2 ${w2}`, kernel: 3, tensors: lokrTensors(CONV, options) },
    ];
  }),
];

/**
 * Checks one case on a backend: kept at every dimension, the output ΔW is the dense ΔW within
 * F16 rounding; truncated at k, its error is the Eckart–Young optimum.
 */
export async function checkCase(backend: Backend, c: LycorisCase): Promise<void> {
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await writeSafetensors(path, c.tensors);
    const stored = await tensorsOf(path);
    await using file = await SafetensorsFile.open(path);
    const { layers } = await readLycorisLayers(file);
    assertEquals(layers.length, 1);
    const layer = layers[0];
    const dense = layer.kind === "loha"
      ? denseLoha(stored, layer.name)
      : denseLokr(stored, layer.name, c.kernel);
    assertEquals([layer.out, layer.inFlat], [dense.rows, dense.cols]);
    const norm = frobenius(dense.v);
    const exact = jacobiSingularValues(dense.v, dense.rows, dense.cols);
    const rank = exact.filter((s) => s > 1e-9 * exact[0]).length;

    // Every dimension kept: exact up to the output's rounding (F16 keeps 11 significant bits).
    const all = await resized(backend, layer, (s) => s.length, "F16");
    assert(all.sigma.length >= rank, `${all.sigma.length} dimensions for rank ${rank}`);
    assert(all.sigma.length <= layer.rank, `${all.sigma.length} > stored rank ${layer.rank}`);
    const f16Error = distance(all.delta, dense.v) / norm;
    assert(f16Error < 1.5e-3, `F16 output off by ${f16Error} relative`);
    const f32 = await resized(backend, layer, (s) => s.length, "F32");
    const f32Error = distance(f32.delta, dense.v) / norm;
    assert(f32Error < 1e-5, `F32 output off by ${f32Error} relative`);
    for (let i = 0; i < rank; i++) assertRelClose(all.sigma[i], exact[i], 1e-5, `σ${i}`);

    // Truncated at k: the error is the optimum sqrt(Σ_{i≥k} σᵢ²)/‖ΔW‖.
    for (const k of [1, Math.ceil(rank / 3), Math.floor(rank / 2), rank - 1]) {
      if (k < 1 || k >= rank) continue;
      const cut = await resized(backend, layer, () => k, "F32");
      const optimum = frobenius(exact.subarray(k)) / norm;
      const error = distance(cut.delta, dense.v) / norm;
      assertRelClose(error, optimum, 1e-4, `k = ${k} of ${rank}`);
    }
  } finally {
    await Deno.remove(path);
  }
}
