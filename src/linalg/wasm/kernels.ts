/**
 * Loader and memory arena for the WASM SIMD kernels (`kernels.wasm`, built
 * from `assembly/` by `tools/build_wasm.ts`). Each {@link Kernels} owns one
 * instance with its own linear memory: callers reserve regions with
 * {@link Kernels.alloc}, fill them through typed views, run kernels on the
 * pointers, and {@link Kernels.reset} the arena between work items. Memory grows
 * as needed (up to the 4 GiB of wasm32) and is reused, never shrunk.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import type { BaseDType } from "../../safetensors/dtype.ts";
import { loadAsset } from "../asset.ts";

/**
 * Where the kernels binary lies (beside this module).
 *
 * @example
 * ```ts
 * import { KERNELS_URL } from "./kernels.ts";
 * if (!KERNELS_URL.pathname.endsWith("/kernels.wasm")) throw new Error(KERNELS_URL.href);
 * ```
 */
export const KERNELS_URL: URL = new URL("./kernels.wasm", import.meta.url);

const PAGE = 65536;
const MAX_PAGES = 65536; // 4 GiB

/**
 * The kernels' code for each float dtype.
 *
 * @example
 * ```ts
 * import { DTYPE_CODES } from "./kernels.ts";
 * // The codes are the kernels' `dtype` arguments: F16 0, BF16 1, F32 2, F64 3.
 * if (DTYPE_CODES.BF16 !== 1) throw new Error("BF16 is code 1");
 * ```
 */
export const DTYPE_CODES: Readonly<Record<BaseDType, number>> = {
  F16: 0,
  BF16: 1,
  F32: 2,
  F64: 3,
  F8_E4M3: 4, // base weights only (sumSquares, decodeF32)
  F8_E5M2: 5,
};

/** The functions `kernels.wasm` exports (pointers are byte offsets into `memory`). */
export interface KernelExports {
  /** The instance's linear memory. */
  readonly memory: WebAssembly.Memory;
  /** First free byte after static data. */
  heapBase(): number;
  /** n values of a dtype code to f32. */
  decodeF32(src: number, dst: number, n: number, dtype: number): void;
  /** n values of a 2- or 4-byte dtype code to f64. */
  decodeRowF64(src: number, dst: number, n: number, dtype: number): void;
  /** rows × cols to its f64 transpose, cols rows of `stride` values (padding zeroed). */
  decodeTransposedF64(
    src: number,
    dst: number,
    rows: number,
    cols: number,
    stride: number,
    dtype: number,
  ): void;
  /** G = X·Xᵀ for X: r rows of `stride` f64 (stride even). */
  gramRows(x: number, r: number, stride: number, g: number): void;
  /**
   * G = X·Xᵀ (r × r f64) for X = src (rows × cols of a dtype code) or its transpose, decoded block
   * by block into scratch (r · gramBlockWidth(r) · 12 bytes); bit-identical to gramRows on the
   * decoded X.
   */
  gramOf(
    src: number,
    dtype: number,
    rows: number,
    cols: number,
    transposed: boolean,
    g: number,
    scratch: number,
  ): void;
  /** Columns per block of gramRows / gramOf for r rows. */
  gramBlockWidth(r: number): number;
  /**
   * up = B·T (B out × r of a dtype code, T r × ldt f32) to out × kept values of output dtype
   * code `code` at dst; scratch for 64·(r + 2·ldt) f32.
   */
  rebuildUp(
    src: number,
    dtype: number,
    out: number,
    r: number,
    t: number,
    ldt: number,
    kept: number,
    dst: number,
    code: number,
    scratch: number,
  ): void;
  /**
   * down = Tᵀ·A (Tᵀ kept × r f32, A r × cols of a dtype code) to kept × cols values of output
   * dtype code `code` at dst; scratch for 256·(r + kept) f32.
   */
  rebuildDown(
    src: number,
    dtype: number,
    r: number,
    cols: number,
    tat: number,
    kept: number,
    dst: number,
    code: number,
    scratch: number,
  ): void;
  /** C = A·B in f64; A(i, p) at a + 8·(i·aRow + p·aCol) (a transposed operand: aRow 1). */
  matmulF64(
    a: number,
    aRow: number,
    aCol: number,
    b: number,
    ldb: number,
    c: number,
    ldc: number,
    m: number,
    k: number,
    n: number,
  ): void;
  /** C = A·B in f32 with leading dimensions. */
  matmulF32(
    a: number,
    lda: number,
    b: number,
    ldb: number,
    c: number,
    ldc: number,
    m: number,
    k: number,
    n: number,
  ): void;
  /**
   * One-sided Jacobi on the `count` f64 rows (length `len`) of `w`, rotating
   * the rows (length `vlen`) of `vt` along, until every pair of rows has
   * |cos| ≤ tolerance; `norms` is scratch for `count` f64. Returns the sweeps.
   */
  orthogonalizeRows(
    w: number,
    count: number,
    len: number,
    vt: number,
    vlen: number,
    norms: number,
    tolerance: number,
  ): number;
  /**
   * Pivoted Cholesky G ≈ Rᵀ·R of an r × r f64 matrix (upper triangle read), stopping at the
   * first pivot ≤ tolerance; writes Rᵀ (r × r, rt[c·r + i] = R[i][c]) and the pivot order (r
   * i32); d is scratch for r f64. Returns the rows of R kept.
   */
  pivotedCholesky(
    g: number,
    r: number,
    tolerance: number,
    rt: number,
    pivots: number,
    d: number,
  ): number;
  /**
   * Eigenvectors of a symmetric n × n f64 matrix c (full storage, overwritten) as the rows of
   * zt (n × n); eigenvalues (unsorted) in d (n f64); e and w scratch for n and 2n f64. Returns 0,
   * or −1 if the QL iteration did not converge.
   */
  symmetricEigenvectors(c: number, n: number, zt: number, d: number, e: number, w: number): number;
  /**
   * Householder tridiagonalisation of a symmetric n × n f64 matrix c (full storage, overwritten
   * by the reflectors): diagonal into d, off-diagonal into e, reflector scales into tau (n f64
   * each); p is scratch for n f64.
   */
  tridiagonalize(c: number, n: number, d: number, e: number, tau: number, p: number): void;
  /** Eigenvalues (unsorted) of the tridiagonal d, e into d (both overwritten); 0, or −1 if QL did not converge. */
  tridiagonalEigenvalues(d: number, e: number, n: number): number;
  /**
   * Unit eigenvectors of the tridiagonal d, e (read only) for `count` of its eigenvalues
   * (lambdas, descending) as the rows of out (count × n f64); work is scratch for 5n f64.
   */
  eigenvectorsAt(
    d: number,
    e: number,
    n: number,
    lambdas: number,
    count: number,
    out: number,
    work: number,
  ): void;
  /** Each of the `count` rows y of ys (n f64) ← Q·y, Q the reflectors `tridiagonalize` left. */
  applyReflectors(c: number, n: number, tau: number, ys: number, count: number): void;
  /**
   * Y ← R₁₁⁻¹·Y for the leading kept × kept triangle of a `pivotedCholesky` factor (rt, r,
   * pivots); Y is kept × count f64 with row stride ldy.
   */
  backSubstitute(
    rt: number,
    r: number,
    pivots: number,
    kept: number,
    y: number,
    count: number,
    ldy: number,
  ): void;
  /** rows × cols f32 (row stride `stride`) copied to contiguous f32 at dst (regions apart). */
  compactRowsF32(src: number, stride: number, dst: number, rows: number, cols: number): void;
  /** n f32 to F16, rounding as `encodeFloats` (to nearest even; NaN to ±0x7e00). */
  encodeF16(src: number, dst: number, n: number): void;
  /** n f32 to BF16, rounding as `encodeFloats` (to nearest even; NaN quieted, sign kept). */
  encodeBF16(src: number, dst: number, n: number): void;
  /** Σ x² over n values (f64 accumulation). */
  sumSquares(src: number, n: number, dtype: number): number;
  /** z = WᵀW·v for W rows × cols f32; v, z cols f32; y scratch for 4 f64. */
  gramMatvec(w: number, rows: number, cols: number, v: number, z: number, y: number): void;
  /** Y = W·Aᵀ (W rows × cols f32, A r × cols f32, Y rows × r f64); y scratch for 4 f64. */
  rowsTimesTransposed(
    w: number,
    rows: number,
    cols: number,
    a: number,
    r: number,
    out: number,
    y: number,
  ): void;
}

let compiled: Promise<WebAssembly.Module> | undefined;

function compileKernels(url: URL): Promise<WebAssembly.Module> {
  if (url.href !== KERNELS_URL.href) return loadAsset(url).then((b) => WebAssembly.compile(b));
  compiled ??= loadAsset(url).then((b) => WebAssembly.compile(b)).catch((e) => {
    compiled = undefined;
    throw e instanceof BackendError ? e : new BackendError(`${url.href}: ${e}`, { cause: e });
  });
  return compiled;
}

let sharedKernels: Promise<Kernels> | undefined;

/**
 * One kernels instance and a bump allocator over its memory.
 *
 * @example
 * ```ts
 * import { Kernels } from "./kernels.ts";
 * const k = await Kernels.load();
 * const p = k.alloc(8 * 3);
 * k.f64(p, 3).set([1, 2, 2]);
 * // ‖(1, 2, 2)‖ = 3 (dtype code 3: F64)
 * if (Math.sqrt(k.exports.sumSquares(p, 3, 3)) !== 3) throw new Error("norm");
 * ```
 */
export class Kernels {
  /** The raw exports. */
  readonly exports: KernelExports;
  readonly #base: number;
  #top: number;

  private constructor(exports: KernelExports) {
    this.exports = exports;
    this.#base = align(exports.heapBase());
    this.#top = this.#base;
  }

  /**
   * Instantiates the kernels (the module is compiled once per thread).
   *
   * @example
   * ```ts
   * import { Kernels } from "./kernels.ts";
   * const k = await Kernels.load();
   * if (k.memoryBytes === 0) throw new Error("no memory");
   * ```
   */
  static async load(url: URL = KERNELS_URL): Promise<Kernels> {
    const module = await compileKernels(url);
    const instance = await WebAssembly.instantiate(module, {});
    return new Kernels(instance.exports as unknown as KernelExports);
  }

  /**
   * This thread's shared instance, loaded on first use: for work that runs from one await to the
   * next (every kernel call and the reading of its results are synchronous), so that callers
   * never interleave in its arena — the CPU backend's inline jobs, the GPU backend's r × r steps.
   *
   * @example
   * ```ts
   * import { Kernels } from "./kernels.ts";
   * if ((await Kernels.shared()) !== (await Kernels.shared())) throw new Error("not shared");
   * ```
   */
  static shared(): Promise<Kernels> {
    return sharedKernels ??= Kernels.load().catch((e) => {
      sharedKernels = undefined;
      throw e;
    });
  }

  /** Current size of the linear memory in bytes. */
  get memoryBytes(): number {
    return this.exports.memory.buffer.byteLength;
  }

  /** Releases every region (the memory itself is kept for the next item). */
  reset(): void {
    this.#top = this.#base;
  }

  /**
   * Reserves `bytes` bytes (16-byte aligned, contents undefined) and returns
   * the pointer. Growing the memory detaches earlier views, so take views
   * after the allocations of a step.
   */
  alloc(bytes: number): number {
    const ptr = this.#top;
    const top = align(ptr + bytes);
    const buffer = this.exports.memory.buffer;
    if (top > buffer.byteLength) {
      const pages = Math.ceil((top - buffer.byteLength) / PAGE);
      if (buffer.byteLength / PAGE + pages > MAX_PAGES) {
        throw new BackendError(
          `the CPU kernels need ${
            Math.ceil(top / 2 ** 20)
          } MiB, more than the 4 GiB of WASM memory`,
        );
      }
      this.exports.memory.grow(pages);
    }
    this.#top = top;
    return ptr;
  }

  /** Copies bytes into a new region and returns its pointer. */
  put(bytes: Uint8Array): number {
    const ptr = this.alloc(bytes.byteLength);
    this.u8(ptr, bytes.byteLength).set(bytes);
    return ptr;
  }

  /** A byte view of a region. */
  u8(ptr: number, length: number): Uint8Array {
    return new Uint8Array(this.exports.memory.buffer, ptr, length);
  }

  /** An i32 view of a region (ptr 4-aligned). */
  i32(ptr: number, length: number): Int32Array {
    return new Int32Array(this.exports.memory.buffer, ptr, length);
  }

  /** An f32 view of a region (ptr 4-aligned). */
  f32(ptr: number, length: number): Float32Array {
    return new Float32Array(this.exports.memory.buffer, ptr, length);
  }

  /** An f64 view of a region (ptr 8-aligned). */
  f64(ptr: number, length: number): Float64Array {
    return new Float64Array(this.exports.memory.buffer, ptr, length);
  }
}

function align(n: number): number {
  return Math.ceil(n / 16) * 16;
}
