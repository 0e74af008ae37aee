/**
 * Validation of `Backend` inputs, shared by every backend: a malformed
 * request is a one-line {@link BackendError} naming the item, never a
 * garbage result or a crash inside a kernel.
 *
 * @module
 */

import { BackendError } from "../errors.ts";
import { dtypeSize, isBaseDType, isFloatDType } from "../safetensors/dtype.ts";
import {
  type BaseWeightRef,
  type Decomposition,
  floatByteLength,
  type FullMatrix,
  type LowRankFactors,
  type RebuildRequest,
  type SingularPairsRequest,
} from "./backend.ts";

function isCount(n: unknown): n is number {
  return Number.isInteger(n) && (n as number) > 0;
}

/**
 * Checks a layer's factors before a backend touches them: positive shape,
 * finite scale, float dtypes, byte lengths that match the shape.
 *
 * @example
 * ```ts
 * import { checkFactors } from "./validation.ts";
 * const f32 = (n: number) => ({ dtype: "F32" as const, bytes: new Uint8Array(4 * n) });
 * checkFactors({ up: f32(2), down: f32(3), out: 2, rank: 1, inFlat: 3, scale: 1 }, "layer x");
 * ```
 */
export function checkFactors(f: LowRankFactors, where: string): void {
  if (!isCount(f.out) || !isCount(f.rank) || !isCount(f.inFlat)) {
    throw new BackendError(
      `${where}: shape out=${f.out} rank=${f.rank} inFlat=${f.inFlat} is not positive whole numbers`,
    );
  }
  if (!Number.isFinite(f.scale)) throw new BackendError(`${where}: scale ${f.scale} is not finite`);
  for (
    const [name, data, rows, cols] of [
      ["up", f.up, f.out, f.rank],
      ["down", f.down, f.rank, f.inFlat],
    ] as const
  ) {
    if (!isFloatDType(data.dtype)) {
      throw new BackendError(`${where}: ${name} has unsupported dtype ${data.dtype}`);
    }
    const expected = rows * cols * dtypeSize(data.dtype);
    // A stored factor's length comes from its file range, a formed one's from its shape:
    // checking it reads and forms nothing.
    const length = floatByteLength(data);
    if (length !== expected) {
      throw new BackendError(
        `${where}: ${name} has ${length} bytes, expected ${expected} (${data.dtype} ${rows}×${cols})`,
      );
    }
  }
}

/**
 * Checks that a decomposition fits its layer (k ≤ min(out, in′, r), r × k transforms).
 *
 * @example
 * ```ts
 * import { checkDecomposition } from "./validation.ts";
 * const f32 = (n: number) => ({ dtype: "F32" as const, bytes: new Uint8Array(4 * n) });
 * const layer = { up: f32(2), down: f32(3), out: 2, rank: 1, inFlat: 3, scale: 1 };
 * const d = { sigma: new Float64Array(1), upTransform: new Float64Array(1), downTransform: new Float64Array(1) };
 * checkDecomposition(d, layer, "layer x");
 * ```
 */
export function checkDecomposition(d: Decomposition, f: LowRankFactors, where: string): void {
  const k = d.sigma.length;
  if (k > Math.min(f.out, f.inFlat, f.rank)) {
    throw new BackendError(
      `${where}: ${k} singular values for a ${f.out}×${f.inFlat} rank-${f.rank} layer`,
    );
  }
  if (d.upTransform.length !== f.rank * k || d.downTransform.length !== f.rank * k) {
    throw new BackendError(
      `${where}: transforms have ${d.upTransform.length} and ${d.downTransform.length} values, expected ${f.rank}×${k}`,
    );
  }
}

/**
 * Checks a rebuild request: its factors and decomposition, a finite rescale ≥ 0,
 * ascending kept indices below k, and an output dtype the backends make.
 *
 * @example
 * ```ts
 * import { checkRebuild } from "./validation.ts";
 * const f32 = (n: number) => ({ dtype: "F32" as const, bytes: new Uint8Array(4 * n) });
 * const factors = { up: f32(2), down: f32(3), out: 2, rank: 1, inFlat: 3, scale: 1 };
 * const decomposition = { sigma: new Float64Array(1), upTransform: new Float64Array(1), downTransform: new Float64Array(1) };
 * checkRebuild({ factors, decomposition, keep: [0], rescale: 1 }, "layer x");
 * ```
 */
export function checkRebuild(request: RebuildRequest, where: string): void {
  const { factors, decomposition, keep, rescale } = request;
  checkFactors(factors, where);
  checkDecomposition(decomposition, factors, where);
  if (!Number.isFinite(rescale) || rescale < 0) {
    throw new BackendError(`${where}: rescale ${rescale} is not a finite number ≥ 0`);
  }
  checkKeep(keep, decomposition.sigma.length, where);
  const { dtype } = request;
  if (dtype !== undefined && dtype !== "F16" && dtype !== "BF16" && dtype !== "F32") {
    throw new BackendError(`${where}: cannot rebuild factors as ${dtype} (F16, BF16 or F32)`);
  }
}

/** Throws a {@link BackendError} unless `keep` is ascending whole indices below k. */
function checkKeep(keep: readonly number[], k: number, where: string): void {
  keep.forEach((m, j) => {
    if (!Number.isInteger(m) || m < 0 || m >= k || (j > 0 && m <= keep[j - 1])) {
      throw new BackendError(
        `${where}: keep must be ascending indices below ${k}, got [${keep.join(", ")}]`,
      );
    }
  });
}

/**
 * Checks a full matrix's shape and byte length (without reading stored data).
 *
 * @example
 * ```ts
 * import { checkMatrix } from "./validation.ts";
 * checkMatrix({ data: { dtype: "F16", bytes: new Uint8Array(12) }, rows: 2, cols: 3 }, "matrix 0");
 * ```
 */
export function checkMatrix(m: FullMatrix, where: string): void {
  if (!isCount(m.rows) || !isCount(m.cols)) {
    throw new BackendError(`${where}: shape ${m.rows}×${m.cols} is not positive whole numbers`);
  }
  if (!isFloatDType(m.data.dtype)) {
    throw new BackendError(`${where}: unsupported dtype ${m.data.dtype}`);
  }
  const expected = m.rows * m.cols * dtypeSize(m.data.dtype), length = floatByteLength(m.data);
  if (length !== expected) {
    throw new BackendError(
      `${where}: ${length} bytes, expected ${expected} (${m.data.dtype} ${m.rows}×${m.cols})`,
    );
  }
}

/**
 * Checks a singular-pairs request: the matrix, a spectrum of its size, and `keep`.
 *
 * @example
 * ```ts
 * import { checkSingularPairs } from "./validation.ts";
 * const matrix = { data: { dtype: "F32" as const, bytes: new Uint8Array(16) }, rows: 2, cols: 2 };
 * const spectrum = { sigma: new Float64Array(2), tridiagonal: new Float64Array(7) };
 * checkSingularPairs({ matrix, spectrum, keep: [1] }, "matrix 0");
 * ```
 */
export function checkSingularPairs(request: SingularPairsRequest, where: string): void {
  const { matrix, spectrum, keep } = request;
  checkMatrix(matrix, where);
  const n = Math.min(matrix.rows, matrix.cols);
  if (spectrum.sigma.length !== n) {
    throw new BackendError(
      `${where}: ${spectrum.sigma.length} singular values for a ${matrix.rows}×${matrix.cols} matrix`,
    );
  }
  checkKeep(keep, n, where);
}

/**
 * Checks a base weight reference: a float dtype (8-bit floats included), a positive shape, a
 * whole offset.
 *
 * @example
 * ```ts
 * import { checkWeight } from "./validation.ts";
 * checkWeight({ path: "base.safetensors", dtype: "F16", offset: 8, rows: 4, cols: 4 }, "weight 0");
 * ```
 */
export function checkWeight(w: BaseWeightRef, where: string): void {
  if (!isBaseDType(w.dtype)) {
    throw new BackendError(`${where}: ${w.path}: unsupported dtype ${w.dtype}`);
  }
  if (!isCount(w.rows) || !isCount(w.cols) || !Number.isInteger(w.offset) || w.offset < 0) {
    throw new BackendError(
      `${where}: ${w.path}: base weight at byte ${w.offset} has invalid shape ${w.rows}×${w.cols}`,
    );
  }
}
