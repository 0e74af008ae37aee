/**
 * The compute interface that the resize pipeline runs on. The CPU backend
 * (`cpu/`) and the WebGPU backend (`gpu/`) implement it with the same maths:
 *
 * - `decompose`: ΔW = scale · B · A (B = up, out × r; A = down, r × in′) is
 *   factorised without forming B·A. With Gram matrices G_B = BᵀB and
 *   G_A = A·Aᵀ (r × r) and their eigendecompositions, B = Q_B·R_B and
 *   Aᵀ = Q_A·R_A with small R factors; the SVD of the small core
 *   M = R_B·R_Aᵀ gives σ, and U = B·T_B, V = Aᵀ·T_A for small r × k
 *   transforms T_B, T_A. Only those transforms are kept: U and Vᵀ are built
 *   for the kept dimensions only, when an output is written (`rebuild`).
 * - `baseNorms`: Frobenius and spectral norms of base weights, read by the
 *   backend straight from the checkpoint file (F16/BF16/F32).
 * - `subspaceScales`: |uᵢᵀ·W·vᵢ| per dimension.
 * - `spectra` and `singularPairs`: a matrix stored in full (a LoKr factor)
 *   in two steps, its singular values alone (from the eigenvalues of its
 *   short-side Gram matrix), then the singular pairs of the dimensions kept
 *   (`full_matrix_svd.ts`).
 *
 * @module
 */

import type { BaseDType, FloatDType } from "../safetensors/dtype.ts";
import { type FileRange, StoredBytes } from "../safetensors/file_range.ts";

/** A float tensor's raw little-endian bytes and dtype (decoded by the backend). */
export interface FloatData {
  /** Element type of `bytes`. */
  readonly dtype: FloatDType;
  /** Little-endian element bytes, row-major (read from `source` on first use where given). */
  readonly bytes: Uint8Array;
  /**
   * Where the bytes lie in a file, when they have not been read: a backend
   * reads them from there itself (a CPU worker straight into its memory)
   * instead of taking `bytes`.
   */
  readonly source?: FileRange;
  /**
   * Length of `bytes`, where it is known without reading or forming them (data formed on
   * demand): validation and batch planning read this instead.
   */
  readonly byteLength?: number;
  /**
   * For f32 data formed from two factors (a LoHa layer's exact factors): how to form it, so a
   * backend with worker threads forms it there from the small factors instead of taking
   * `bytes` (which forms it on this thread).
   */
  readonly khatriRao?: KhatriRaoData;
}

/** A matrix with its tensor name and file, for messages. */
export interface NamedMatrix extends FullMatrix {
  /** Tensor name. */
  readonly name: string;
  /** File it lies in. */
  readonly file?: string;
}

/**
 * A Khatri–Rao product of two factors. `"up"`: a (n × r1) and b (n × r2) give n × r1·r2 with
 * column i·r2 + j = a[:, i] ⊙ b[:, j]. `"down"`: a (r1 × n) and b (r2 × n) give r1·r2 × n
 * with row i·r2 + j = a[i, :] ⊙ b[j, :]. Formed in f32; a value that is not finite in a or b
 * fails naming its tensor.
 */
export interface KhatriRaoData {
  /** Which product. */
  readonly side: "up" | "down";
  /** The first factor. */
  readonly a: NamedMatrix;
  /** The second factor. */
  readonly b: NamedMatrix;
}

/**
 * The length of a float tensor's bytes, read from `byteLength` or `source` where given, so
 * that neither file data nor formed data is produced to learn it.
 *
 * @example
 * ```ts
 * import { floatByteLength } from "./backend.ts";
 * const form = (): Uint8Array => {
 *   throw new Error("formed");
 * };
 * const data = { dtype: "F32" as const, byteLength: 8, get bytes() { return form(); } };
 * if (floatByteLength(data) !== 8) throw new Error("length");
 * ```
 */
export function floatByteLength(data: FloatData): number {
  return data.byteLength ?? data.source?.byteLength ?? data.bytes.byteLength;
}

/**
 * Float data left in its file: `bytes` reads it on first use (and keeps it),
 * while a CPU worker reads `source` straight into its own memory. Posted to a
 * worker, it travels as its dtype and source (the getter is not copied).
 *
 * @example
 * ```ts
 * import { StoredFloatData } from "./backend.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array(new Float32Array([0, 1.5]).buffer));
 * const data = new StoredFloatData("F32", { path, offset: 4, byteLength: 4 });
 * if (new Float32Array(data.bytes.buffer)[0] !== 1.5) throw new Error("read the wrong bytes");
 * await Deno.remove(path);
 * ```
 */
export class StoredFloatData implements FloatData {
  /** Element type. */
  readonly dtype: FloatDType;
  /** Where the bytes lie. */
  readonly source: FileRange;
  readonly #stored: StoredBytes;

  /** Data of `dtype` at `source` (a range, or bytes already shared with a tensor). */
  constructor(dtype: FloatDType, source: FileRange | StoredBytes) {
    this.dtype = dtype;
    this.#stored = source instanceof StoredBytes ? source : new StoredBytes(source);
    this.source = this.#stored.source;
  }

  /** The bytes (read from the file on first use). */
  get bytes(): Uint8Array {
    return this.#stored.bytes;
  }
}

/** The two factors of one LoRA layer: ΔW = scale · up · down. */
export interface LowRankFactors {
  /** B, `out × rank`, row-major. */
  readonly up: FloatData;
  /** A, `rank × inFlat`, row-major (conv kernels flattened as in×kh×kw). */
  readonly down: FloatData;
  /** Rows of ΔW. */
  readonly out: number;
  /** Stored rank r. */
  readonly rank: number;
  /** Columns of ΔW (in′ = product of the down weight's trailing dims). */
  readonly inFlat: number;
  /** α / r (for a merge, the geometric-mean per-rank scale). */
  readonly scale: number;
}

/** The SVD of one layer's ΔW, held as transforms of its factors. */
export interface Decomposition {
  /** Singular values of ΔW = scale·B·A (scale included), descending, length k ≤ min(out, in′, r). */
  readonly sigma: Float64Array;
  /** T_B, `rank × k` row-major: U = B · T_B (columns orthonormal). */
  readonly upTransform: Float64Array;
  /** T_A, `rank × k` row-major: V = Aᵀ · T_A (columns orthonormal). */
  readonly downTransform: Float64Array;
}

/** A request to build output factors for the kept dimensions of one layer. */
export interface RebuildRequest {
  /** The layer's input factors. */
  readonly factors: LowRankFactors;
  /** Its decomposition. */
  readonly decomposition: Decomposition;
  /** Indices (into `sigma`) of the dimensions to keep, ascending. */
  readonly keep: readonly number[];
  /** Factor multiplying every singular value (recipe `rescale`). */
  readonly rescale: number;
  /**
   * Element type of the rebuilt factors (default `"F32"`): the products are
   * computed in f32 and rounded once to this type, as `encodeFloats` rounds,
   * so a backend with worker threads also does the encoding off the caller's
   * thread.
   */
  readonly dtype?: RebuildDType;
}

/** Element types {@link RebuiltFactors} can be asked in. */
export type RebuildDType = "F16" | "BF16" | "F32";

/**
 * Output factors with the singular values split evenly (√σ on each side):
 * `up·down·alpha/k′ = Σ_kept rescale·σᵢ·uᵢ·vᵢᵀ` with alpha = scale·k′, in the
 * element type the request asked for.
 */
export interface RebuiltFactors {
  /** `out × k′` row-major. */
  readonly up: FloatData;
  /** `k′ × inFlat` row-major. */
  readonly down: FloatData;
}

/** Where a base weight (or a row block of one) lies in a checkpoint file. */
export interface BaseWeightRef {
  /** Checkpoint path. */
  readonly path: string;
  /** Element type on disk (8-bit floats included). */
  readonly dtype: BaseDType;
  /** Absolute byte offset of the first element. */
  readonly offset: number;
  /** Rows of the flattened weight (out). */
  readonly rows: number;
  /** Columns of the flattened weight (in′). */
  readonly cols: number;
}

/** Which norms to compute. */
export interface NormRequest {
  /** Compute the exact Frobenius norm. */
  readonly frobenius: boolean;
  /** Compute the spectral norm (σ_max, within 1e-4 relative). */
  readonly spectral: boolean;
}

/** Norms of one base weight (only the requested ones are set). */
export interface BaseNorms {
  /** ‖W‖_F. */
  frobenius?: number;
  /** σ_max(W). */
  spectral?: number;
}

/** A request for per-dimension subspace scales |uᵢᵀ·W·vᵢ|. */
export interface SubspaceRequest {
  /** The base weight W (rows = out, cols = in′). */
  readonly weight: BaseWeightRef;
  /** The layer's factors. */
  readonly factors: LowRankFactors;
  /** The layer's decomposition. */
  readonly decomposition: Decomposition;
}

/** A matrix stored in full, rows × cols (a LoKr factor that is not a low-rank product). */
export interface FullMatrix {
  /** Its elements, row-major (conv kernels flattened as in×kh×kw). */
  readonly data: FloatData;
  /** Rows. */
  readonly rows: number;
  /** Columns. */
  readonly cols: number;
}

/** The singular values of a full matrix, and what finding some of their vectors later needs. */
export interface MatrixSpectrum {
  /** min(rows, cols) singular values, descending (zero below rounding noise). */
  readonly sigma: Float64Array;
  /**
   * The tridiagonal form of the matrix's short-side Gram matrix and its reflectors, kept so
   * that each kept dimension's vectors cost O(n²) instead of a second O(n³) reduction; empty
   * for a short side over 256, whose form would hold n²/2 values (`singularPairs` forms it
   * again). Opaque: given back to {@link Backend.singularPairs} as it came.
   */
  readonly tridiagonal: Float64Array;
}

/** A request for the singular pairs of the kept dimensions of a full matrix. */
export interface SingularPairsRequest {
  /** The matrix. */
  readonly matrix: FullMatrix;
  /** Its spectrum, from {@link Backend.spectra}. */
  readonly spectrum: MatrixSpectrum;
  /** Indices (into `spectrum.sigma`) of the dimensions to keep, ascending. */
  readonly keep: readonly number[];
}

/** Progress callback: items done so far and the total. */
export type Progress = (done: number, total: number) => void;

/**
 * Options shared by backend calls; `T` is the type of one item's result.
 */
export interface BackendCallOptions<T = unknown> {
  /** Called as items complete. */
  readonly onProgress?: Progress;
  /**
   * Called with each item's result as soon as it is ready (before the call's
   * promise resolves), so a consumer can start on early items — the writer
   * streams an output while the rest is still being rebuilt. Items complete
   * roughly in input order, never all at the end.
   */
  readonly onResult?: (index: number, result: T) => void;
  /**
   * Aborting drops the work not started yet (the CPU backend's queued jobs, the GPU backend's
   * next batches of a decomposition) and rejects the call with the signal's reason.
   */
  readonly signal?: AbortSignal;
}

/**
 * A compute backend. Results must not depend on batching or worker count.
 *
 * @example
 * ```ts ignore
 * import type { Backend } from "./backend.ts";
 * async function sigmas(backend: Backend, layers: LowRankFactors[]) {
 *   return (await backend.decompose(layers)).map((d) => d.sigma);
 * }
 * ```
 */
export interface Backend extends AsyncDisposable {
  /** `"cpu"` or `"webgpu"`. */
  readonly name: string;
  /** Human description (worker count, adapter name, …). */
  readonly description: string;
  /** SVD of each layer's ΔW (see the module doc). */
  decompose(
    layers: readonly LowRankFactors[],
    options?: BackendCallOptions<Decomposition>,
  ): Promise<Decomposition[]>;
  /** Output factors for the kept dimensions of each layer. */
  rebuild(
    requests: readonly RebuildRequest[],
    options?: BackendCallOptions<RebuiltFactors>,
  ): Promise<RebuiltFactors[]>;
  /** Norms of base weights, read from the checkpoint by the backend. */
  baseNorms(
    weights: readonly BaseWeightRef[],
    which: NormRequest,
    options?: BackendCallOptions<BaseNorms>,
  ): Promise<BaseNorms[]>;
  /** |uᵢᵀ·W·vᵢ| for every dimension of each layer. */
  subspaceScales(
    requests: readonly SubspaceRequest[],
    options?: BackendCallOptions<Float64Array>,
  ): Promise<Float64Array[]>;
  /** The singular values of each full matrix, without vectors (see the module doc). */
  spectra(
    matrices: readonly FullMatrix[],
    options?: BackendCallOptions<MatrixSpectrum>,
  ): Promise<MatrixSpectrum[]>;
  /**
   * The kept singular pairs of each full matrix as f32 LoRA factors: up = U·diag(√σ)
   * (rows × k), down = diag(√σ)·Vᵀ (k × cols) over the kept dimensions.
   */
  singularPairs(
    requests: readonly SingularPairsRequest[],
    options?: BackendCallOptions<RebuiltFactors>,
  ): Promise<RebuiltFactors[]>;
  /** Releases workers / GPU resources. */
  close(): Promise<void>;
}
