/**
 * Values of synthetic base weights (noise plus power-law rank-one spikes) and the writer of a
 * whole synthetic SDXL base checkpoint.
 *
 * @module
 */

import { dtypeSize } from "../safetensors/dtype.ts";
import { numel, type TensorSpec } from "../safetensors/header.ts";
import {
  type TensorSource,
  type WriteOptions,
  type WriteResult,
  writeSafetensors,
} from "../safetensors/writer.ts";
import {
  CHUNK,
  Rng,
  store,
  SYNTHETIC_METADATA_KEY,
  SYNTHETIC_VERSION,
  type SyntheticDType,
} from "./generator.ts";
import { type BaseSpecOptions, sdxlBaseSpecs, sdxlWidths } from "./sdxl_shapes.ts";

/** Most rank-one spikes a generated base weight carries. */
export const SPIKES = 4;

/** Options of {@link syntheticMatrix}. */
export interface MatrixOptions {
  /** Integer seed (default 0). */
  readonly seed?: number;
  /** Stream name mixed into the seed (default "matrix"). */
  readonly name?: string;
  /** Overall factor (default 1). */
  readonly gain?: number;
}

/**
 * A `rows × cols` matrix (row-major float32) built like a generated base
 * weight: noise of standard deviation `gain/√cols` plus power-law rank-one
 * spikes. For tests that need realistic spectra without a file.
 *
 * @example
 * ```ts
 * import { syntheticMatrix } from "./mod.ts";
 * import assert from "node:assert/strict";
 * const w = syntheticMatrix(64, 32, { seed: 1 });
 * assert.deepEqual(w.length, 2048);
 * ```
 */
export function syntheticMatrix(
  rows: number,
  cols: number,
  options: MatrixOptions = {},
): Float32Array {
  const out = new Uint8Array(rows * cols * 4);
  const rng = new Rng(options.seed ?? 0, options.name ?? "matrix");
  fillMatrix(out, "F32", 0, rows, cols, rng, options.gain ?? 1);
  return new Float32Array(out.buffer);
}

/** Generates a `rows × cols` block into `out` starting at row `row0`. */
function fillMatrix(
  out: Uint8Array,
  dtype: SyntheticDType,
  row0: number,
  rows: number,
  cols: number,
  rng: Rng,
  gain: number,
): void {
  const std = gain / Math.sqrt(cols);
  const edge = std * (Math.sqrt(rows) + Math.sqrt(cols));
  // Exactly SPIKES (= 4) spike slots, unrolled below; slots beyond min(rows, cols) stay zero.
  const k = Math.min(SPIKES, rows, cols);
  const u: Float32Array[] = [];
  const v: Float32Array[] = [];
  const sigma: number[] = [];
  for (let s = 0; s < SPIKES; s++) {
    u.push(s < k ? rng.unit(rows) : new Float32Array(rows));
    v.push(s < k ? rng.unit(cols) : new Float32Array(cols));
    sigma.push(s < k ? 5 * edge / (s + 1) : 0);
  }
  const [u0, u1, u2, u3] = u;
  const [v0, v1, v2, v3] = v;
  const chunkRows = Math.max(1, Math.floor(CHUNK / cols));
  const scratch = new Float32Array(Math.min(rows, chunkRows) * cols);
  const amplitude = std * Math.sqrt(3);
  for (let r0 = 0; r0 < rows; r0 += chunkRows) {
    const n = Math.min(chunkRows, rows - r0);
    const chunk = scratch.subarray(0, n * cols);
    rng.fill(chunk, 0, n * cols, amplitude);
    for (let r = 0; r < n; r++) {
      const i = r0 + r;
      const a0 = sigma[0] * u0[i],
        a1 = sigma[1] * u1[i],
        a2 = sigma[2] * u2[i],
        a3 = sigma[3] * u3[i];
      const o = r * cols;
      for (let j = 0; j < cols; j++) {
        chunk[o + j] += a0 * v0[j] + a1 * v1[j] + a2 * v2[j] + a3 * v3[j];
      }
    }
    store(out, dtype, (row0 + r0) * cols, chunk);
  }
}

/** Fills `n` elements with `center + uniform(-spread, spread)`. */
function fillVector(
  out: Uint8Array,
  dtype: SyntheticDType,
  n: number,
  rng: Rng,
  center: number,
  spread: number,
) {
  for (let at = 0; at < n; at += CHUNK) {
    const chunk = new Float32Array(Math.min(CHUNK, n - at));
    rng.fill(chunk, 0, chunk.length, spread);
    for (let i = 0; i < chunk.length; i++) chunk[i] += center;
    store(out, dtype, at, chunk);
  }
}

/** Row-block gains of CLIP-G's fused q, k, v projection. */
const QKV_GAINS = [1, 0.7, 0.45];

/**
 * The bytes of one generated base tensor (deterministic from seed and name).
 *
 * @example
 * ```ts
 * import { syntheticBaseTensor } from "./mod.ts";
 * import assert from "node:assert/strict";
 * const b = syntheticBaseTensor({ name: "x.weight", dtype: "F16", shape: [8, 4] }, { seed: 3 });
 * assert.deepEqual(b.length, 64);
 * ```
 */
export function syntheticBaseTensor(
  spec: TensorSpec,
  options: { readonly seed?: number } = {},
): Uint8Array {
  const { name, dtype, shape } = spec;
  const n = numel(shape);
  const out = new Uint8Array(n * dtypeSize(dtype));
  if (dtype === "I64") {
    // position_ids: 0, 1, 2, … in every row
    const ids = new BigInt64Array(out.buffer);
    const row = shape[shape.length - 1] ?? 1;
    for (let i = 0; i < n; i++) ids[i] = BigInt(i % row);
    return out;
  }
  if (dtype !== "F16" && dtype !== "BF16" && dtype !== "F32") {
    throw new RangeError(`synthetic tensor '${name}': unsupported dtype ${dtype}`);
  }
  const rng = new Rng(options.seed ?? 0, name);
  if (shape.length === 0) {
    store(out, dtype, 0, new Float32Array([name.endsWith("logit_scale") ? Math.log(100) : 1]));
  } else if (shape.length === 1) {
    const bias = name.endsWith("bias");
    fillVector(out, dtype, n, rng, bias ? 0 : 1, bias ? 0.02 : 0.1);
  } else {
    const rows = shape[0];
    const cols = n / rows;
    const gain = Math.exp(0.6 * (rng.next() - 0.5)); // layers differ a little in scale
    if (name.endsWith("attn.in_proj_weight") && rows % 3 === 0) {
      for (let b = 0; b < 3; b++) {
        fillMatrix(out, dtype, b * rows / 3, rows / 3, cols, rng, gain * QKV_GAINS[b]);
      }
    } else {
      fillMatrix(out, dtype, 0, rows, cols, rng, gain);
    }
  }
  return out;
}

// ------------------------------------------------------------------ base file

/** Options of {@link writeSyntheticBase}. */
export interface SyntheticBaseOptions extends BaseSpecOptions {
  /** Integer seed of every value (default 0). */
  readonly seed?: number;
  /** Extra `__metadata__` entries. */
  readonly metadata?: Readonly<Record<string, string>>;
  /** Progress callback, as {@link WriteOptions.onProgress}. */
  readonly onProgress?: WriteOptions["onProgress"];
}

/**
 * Writes a synthetic SGM SDXL base checkpoint, streaming tensor by tensor
 * (memory: one tensor plus a small scratch buffer; the full-size file is
 * 6.9 GB).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeSyntheticBase } from "@x/resize-lora/testing";
 * const path = `${await Deno.makeTempDir()}/micro_base.safetensors`;
 * const { bytes } = await writeSyntheticBase(path, { scale: 1 / 64, seed: 7 });
 * assert.equal((await Deno.stat(path)).size, bytes);
 * ```
 */
export function writeSyntheticBase(
  path: string,
  options: SyntheticBaseOptions = {},
): Promise<WriteResult> {
  const seed = options.seed ?? 0;
  const scale = options.scale ?? 1;
  const specs = sdxlBaseSpecs(options);
  const tensors: TensorSource[] = specs.map((spec) => ({
    ...spec,
    data: () => syntheticBaseTensor(spec, { seed }),
  }));
  const metadata = {
    "modelspec.architecture": "stable-diffusion-xl-v1-base",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.resolution": "1024x1024",
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.title": `Synthetic SDXL base (scale ${
      sdxlWidths(scale).headWidth
    }/64, random weights)`,
    [SYNTHETIC_METADATA_KEY]: JSON.stringify({
      version: SYNTHETIC_VERSION,
      kind: "base",
      seed,
      scale,
    }),
    ...options.metadata,
  };
  return writeSafetensors(path, tensors, { metadata, onProgress: options.onProgress });
}
