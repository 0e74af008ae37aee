/**
 * A LoHa layer as an exact low-rank product, so the ordinary decomposition
 * and rebuild apply to it unchanged.
 *
 * LoHa stores ΔW = scale · (W1a·W1b) ⊙ (W2a·W2b) with W1a out × r1,
 * W1b r1 × in′, W2a out × r2, W2b r2 × in′. Entry by entry,
 * (Σᵢ w1a[o,i]·w1b[i,c])·(Σⱼ w2a[o,j]·w2b[j,c]) = Σᵢⱼ (w1a[o,i]·w2a[o,j])·(w1b[i,c]·w2b[j,c]),
 * so ΔW = scale · B·A with the Khatri–Rao factors B = W1a ⊙ᵣ W2a (out × r1·r2,
 * column (i,j) = w1a[:,i] ⊙ w2a[:,j]) and A = W1b ⊙꜀ W2b (r1·r2 × in′,
 * row (i,j) = w1b[i,:] ⊙ w2b[j,:]): a LoRA of rank r1·r2, exactly.
 *
 * Choice of route: the Gram-based decomposition of a rank-R product costs
 * about (out + in′)·R²/2 multiply-adds, and writing ΔW itself as a product
 * (an identity on its short side) costs the same with R = min(out, in′). So
 * the Khatri–Rao factors are used while r1·r2 ≤ min(out, in′), and the dense
 * ΔW beyond (where r1·r2 exceeds what ΔW's rank can be). Every SDXL linear
 * has min(out, in′) ≥ 320, so LoHa up to 16 × 16 always takes the Khatri–Rao
 * route there (see `docs/design.md`, "LyCORIS layers").
 *
 * @module
 */

import { LoraError } from "../errors.ts";
import type { KhatriRaoData, LowRankFactors } from "./backend.ts";
import {
  decodeFactor,
  f32Bytes,
  factorLabel,
  type FactorMatrix,
  FormedFloatData,
  identityF32,
} from "./factor_matrix.ts";

/** The four factors of a LoHa layer and its scale (α / r1, or 1 without α). */
export interface HadamardFactors {
  /** W1a, out × r1. */
  readonly w1a: FactorMatrix;
  /** W1b, r1 × in′. */
  readonly w1b: FactorMatrix;
  /** W2a, out × r2. */
  readonly w2a: FactorMatrix;
  /** W2b, r2 × in′. */
  readonly w2b: FactorMatrix;
  /** Scale of the product. */
  readonly scale: number;
}

/** The shape of a LoHa layer's ΔW and its two ranks. */
export interface HadamardShape {
  /** Rows of ΔW. */
  readonly out: number;
  /** Columns of ΔW. */
  readonly inFlat: number;
  /** Rank of W1a·W1b as stored. */
  readonly r1: number;
  /** Rank of W2a·W2b as stored. */
  readonly r2: number;
}

/** How a LoHa layer is handed to the decomposition. */
export type HadamardRoute = "khatri-rao" | "dense";

/**
 * Checks that the four factors chain and that both products have the same
 * shape and rank, as LyCORIS writes them; a mismatch is a one-line
 * {@link LoraError} naming the tensors.
 *
 * @example
 * ```ts
 * import { hadamardShape } from "./khatri_rao.ts";
 * const m = (rows: number, cols: number, name: string) =>
 *   ({ data: { dtype: "F32" as const, bytes: new Uint8Array(4 * rows * cols) }, rows, cols, name });
 * const shape = hadamardShape({
 *   w1a: m(6, 2, "w1a"), w1b: m(2, 5, "w1b"), w2a: m(6, 2, "w2a"), w2b: m(2, 5, "w2b"), scale: 1,
 * });
 * if (shape.out !== 6 || shape.inFlat !== 5 || shape.r1 * shape.r2 !== 4) throw new Error("shape");
 * ```
 */
export function hadamardShape(f: HadamardFactors): HadamardShape {
  const { w1a, w1b, w2a, w2b } = f;
  for (const [a, b] of [[w1a, w1b], [w2a, w2b]]) {
    if (a.cols !== b.rows) {
      throw new LoraError(
        `${
          factorLabel(a)
        } (${a.rows}×${a.cols}) does not chain with '${b.name}' (${b.rows}×${b.cols})`,
      );
    }
  }
  if (w1b.rows !== w2b.rows) {
    throw new LoraError(
      `${
        factorLabel(w2b)
      }: Hadamard rank ${w2b.rows} does not match rank ${w1b.rows} of '${w1b.name}'`,
    );
  }
  if (w1a.rows !== w2a.rows || w1b.cols !== w2b.cols) {
    throw new LoraError(
      `${
        factorLabel(w2a)
      }: Hadamard product ${w2a.rows}×${w2b.cols} does not match ${w1a.rows}×${w1b.cols} of '${w1a.name}'`,
    );
  }
  return { out: w1a.rows, inFlat: w1b.cols, r1: w1b.rows, r2: w2b.rows };
}

/**
 * The fastest exact route for a LoHa layer (see the module doc).
 *
 * @example
 * ```ts
 * import { hadamardRoute } from "./khatri_rao.ts";
 * if (hadamardRoute({ out: 640, inFlat: 640, r1: 16, r2: 16 }) !== "khatri-rao") throw new Error();
 * if (hadamardRoute({ out: 64, inFlat: 640, r1: 16, r2: 16 }) !== "dense") throw new Error();
 * ```
 */
export function hadamardRoute(shape: HadamardShape): HadamardRoute {
  return shape.r1 * shape.r2 <= Math.min(shape.out, shape.inFlat) ? "khatri-rao" : "dense";
}

/**
 * A LoHa layer as LoRA factors with ΔW = scale · up · down exactly. The
 * factors' bytes (f32) are formed from the LoHa factors each time a backend
 * reads them (see {@link FormedFloatData}); a non-finite value in a factor
 * fails there, naming the tensor.
 *
 * @example
 * ```ts
 * import { hadamardLowRank } from "./khatri_rao.ts";
 * const m = (rows: number, cols: number, values: number[]) => ({
 *   data: { dtype: "F32" as const, bytes: new Uint8Array(new Float32Array(values).buffer) },
 *   rows, cols, name: "m",
 * });
 * // (1·[2 3]) ⊙ (4·[5 6]) = [40 72]: rank 1, up [4], down [10 18].
 * const f = hadamardLowRank({
 *   w1a: m(1, 1, [1]), w1b: m(1, 2, [2, 3]), w2a: m(1, 1, [4]), w2b: m(1, 2, [5, 6]), scale: 0.5,
 * });
 * const up = new Float32Array(f.up.bytes.buffer), down = new Float32Array(f.down.bytes.buffer);
 * if (up[0] * down[0] !== 40 || up[0] * down[1] !== 72 || f.scale !== 0.5) throw new Error();
 * ```
 */
export function hadamardLowRank(
  f: HadamardFactors,
  route: HadamardRoute = hadamardRoute(hadamardShape(f)),
): LowRankFactors {
  const shape = hadamardShape(f);
  const { out, inFlat, r1, r2 } = shape;
  if (route === "khatri-rao") {
    return {
      up: khatriRaoData({ side: "up", a: f.w1a, b: f.w2a }, out * r1 * r2),
      down: khatriRaoData({ side: "down", a: f.w1b, b: f.w2b }, r1 * r2 * inFlat),
      out,
      rank: r1 * r2,
      inFlat,
      scale: f.scale,
    };
  }
  const dense = new FormedFloatData(
    "F32",
    out * inFlat,
    () => f32Bytes(hadamardDense(f, shape)),
  );
  // ΔW on one side, the identity on its short side: rank min(out, in′).
  return out <= inFlat
    ? {
      up: new FormedFloatData("F32", out * out, () => identityF32(out)),
      down: dense,
      out,
      rank: out,
      inFlat,
      scale: f.scale,
    }
    : {
      up: dense,
      down: new FormedFloatData("F32", inFlat * inFlat, () => identityF32(inFlat)),
      out,
      rank: inFlat,
      inFlat,
      scale: f.scale,
    };
}

/**
 * A Khatri–Rao product in f32 (see {@link KhatriRaoData}), its factors checked finite; written
 * into `into` when given (its length must be the product's).
 *
 * @example
 * ```ts
 * import { khatriRaoProduct } from "./khatri_rao.ts";
 * const m = (rows: number, cols: number, values: number[]) => ({
 *   data: { dtype: "F32" as const, bytes: new Uint8Array(new Float32Array(values).buffer) },
 *   rows, cols, name: "m",
 * });
 * // Rows [1 2] and [3 4 5] give the row [3 4 5 6 8 10] (column i·3 + j = a[:, i]·b[:, j]).
 * const up = khatriRaoProduct({ side: "up", a: m(1, 2, [1, 2]), b: m(1, 3, [3, 4, 5]) });
 * if (up.join() !== "3,4,5,6,8,10") throw new Error(`${up}`);
 * ```
 */
export function khatriRaoProduct(
  { side, a, b }: KhatriRaoData,
  into?: Float32Array,
): Float32Array {
  const x = decodeFactor(a), y = decodeFactor(b);
  if (side === "up") {
    const n = a.rows, r1 = a.cols, r2 = b.cols;
    const up = into ?? new Float32Array(n * r1 * r2);
    for (let o = 0, at = 0; o < n; o++) {
      for (let i = 0; i < r1; i++) {
        const v = x[o * r1 + i];
        for (let j = 0; j < r2; j++) up[at++] = v * y[o * r2 + j];
      }
    }
    return up;
  }
  const n = a.cols, r1 = a.rows, r2 = b.rows;
  const down = into ?? new Float32Array(r1 * r2 * n);
  for (let i = 0; i < r1; i++) {
    for (let j = 0; j < r2; j++) {
      const row = (i * r2 + j) * n;
      for (let c = 0; c < n; c++) down[row + c] = x[i * n + c] * y[j * n + c];
    }
  }
  return down;
}

/** A Khatri–Rao product as data formed where it is read (on a CPU worker, by the worker). */
function khatriRaoData(product: KhatriRaoData, elements: number): FormedFloatData {
  return new FormedFloatData("F32", elements, () => f32Bytes(khatriRaoProduct(product)), product);
}

/** (W1a·W1b) ⊙ (W2a·W2b), out × in′ (without the scale), accumulated in f64. */
export function hadamardDense(f: HadamardFactors, shape: HadamardShape): Float32Array {
  const { out, inFlat, r1, r2 } = shape;
  const w1a = decodeFactor(f.w1a), w1b = decodeFactor(f.w1b);
  const w2a = decodeFactor(f.w2a), w2b = decodeFactor(f.w2b);
  const dense = new Float32Array(out * inFlat);
  const p1 = new Float64Array(inFlat), p2 = new Float64Array(inFlat);
  for (let o = 0; o < out; o++) {
    p1.fill(0);
    p2.fill(0);
    for (let i = 0; i < r1; i++) {
      const x = w1a[o * r1 + i];
      for (let c = 0; c < inFlat; c++) p1[c] += x * w1b[i * inFlat + c];
    }
    for (let j = 0; j < r2; j++) {
      const x = w2a[o * r2 + j];
      for (let c = 0; c < inFlat; c++) p2[c] += x * w2b[j * inFlat + c];
    }
    for (let c = 0; c < inFlat; c++) dense[o * inFlat + c] = p1[c] * p2[c];
  }
  return dense;
}
