/**
 * The SVD of a matrix stored in full (a LoKr factor that is not a low-rank product), shared by
 * both backends, in two steps: its singular values alone, which is all that ranking its
 * dimensions needs, then the singular pairs of the few dimensions a resize keeps.
 *
 * Both steps go through the eigenvalues of the Gram matrix on the short side, G = M·Mᵀ (or MᵀM
 * when M is tall): Householder tridiagonalisation T = Qᵀ·G·Q, then T's eigenvalues by implicit
 * QL without vectors, σᵢ = √λᵢ. The pairs step forms the same T from the same bytes, so its
 * eigenvalues are the first step's bit for bit; eigenvectors of the kept eigenvalues come from
 * inverse iteration on T (orthogonalised within clusters of close eigenvalues) taken back
 * through Q, and the other side's vectors from M itself. All n eigenvectors, as the LoRA core
 * computes, would cost several times the tridiagonalisation; a full LoKr factor has 80–160
 * dimensions per layer, of which a resize keeps a handful (docs/design.md, "LyCORIS layers").
 *
 * Accuracy: rounding makes λᵢ exact to about ε·n·λ₁, so σᵢ is exact to a relative
 * ε·n·(σ₁/σᵢ)², far under input precision for any dimension a resize keeps. An eigenvalue at or
 * below the noise bound ε·max(rows, cols)·max(diag G) (what rounding leaves of an exactly
 * rank-deficient matrix, the bound the LoRA core's pivoting uses) gives σ = 0 and no vectors.
 *
 * @module
 */

import { BackendError } from "../errors.ts";
import type { FloatData, MatrixSpectrum, RebuiltFactors } from "./backend.ts";
import { pivotTolerance, scaleByPowerOfTwo, scaleToUnit } from "./gram_svd.ts";
import { DTYPE_CODES, type Kernels } from "./wasm/kernels.ts";

/** A full matrix already in kernel memory. */
export interface KernelMatrix {
  /** Its bytes. */
  readonly ptr: number;
  /** Kernel dtype code of the bytes. */
  readonly dtype: number;
  /** Rows. */
  readonly rows: number;
  /** Columns. */
  readonly cols: number;
}

/**
 * The singular values of a full matrix in kernel memory (min(rows, cols) of them, descending;
 * NaN when an element is not finite) and the tridiagonal form of its short-side Gram, which
 * {@link fullMatrixSingularPairs} takes back. Uses kernel memory from its current top.
 *
 * @example
 * ```ts
 * import { Kernels } from "./wasm/kernels.ts";
 * import { fullMatrixSpectrum } from "./full_matrix_svd.ts";
 * const kernels = await Kernels.load();
 * // [[3, 0], [0, 4]] has the singular values 4 and 3.
 * const ptr = kernels.put(new Uint8Array(new Float32Array([3, 0, 0, 4]).buffer));
 * const { sigma } = fullMatrixSpectrum(kernels, { ptr, dtype: 2, rows: 2, cols: 2 });
 * if (Math.abs(sigma[0] - 4) > 1e-12 || Math.abs(sigma[1] - 3) > 1e-12) throw new Error(`${sigma}`);
 * ```
 */
export function fullMatrixSpectrum(kernels: Kernels, m: KernelMatrix): MatrixSpectrum {
  const form = tridiagonalForm(kernels, m);
  const { n, sigma } = form;
  if (!form.kernel || n > KEPT_TRIDIAGONAL) return { sigma, tridiagonal: new Float64Array(0) };
  // Kept: the Gram's scale, T's diagonals, the reflector scales and the reflectors (row k right
  // of the diagonal).
  const { exponent, d, e, tau, reflectors } = form.kernel;
  const tridiagonal = new Float64Array(packedLength(n));
  tridiagonal[0] = exponent;
  tridiagonal.set(kernels.f64(d, n), 1);
  tridiagonal.set(kernels.f64(e, n), 1 + n);
  tridiagonal.set(kernels.f64(tau, n), 1 + 2 * n);
  const c = kernels.f64(reflectors, n * n);
  for (let k = 0, at = 1 + 3 * n; k < n; at += n - k - 1, k++) {
    tridiagonal.set(c.subarray(k * n + k + 1, (k + 1) * n), at);
  }
  return { sigma, tridiagonal };
}

/** Length of a carried tridiagonal form for a short side of n. */
function packedLength(n: number): number {
  return 1 + 3 * n + n * (n - 1) / 2;
}

/**
 * Short sides up to which a {@link MatrixSpectrum} carries its tridiagonal form (n²/2 f64, 256 KB
 * at 256): a factor-8 LoKr's full factors are 80–160 wide. A wider matrix's (factor 2 or 4) would
 * hold hundreds of megabytes over a UNet, so {@link fullMatrixSingularPairs} forms it again.
 */
export const KEPT_TRIDIAGONAL = 256;

/** The tridiagonal form of a matrix's short-side Gram, in kernel memory. */
interface TridiagonalForm {
  /** The short side. */
  readonly n: number;
  /** Singular values, descending (zero at or below the noise bound; NaN for a bad element). */
  readonly sigma: Float64Array;
  /** Where the form lies (absent for a bad element). */
  readonly kernel?: KernelTridiagonal;
}

/** A tridiagonal form in kernel memory. */
interface KernelTridiagonal {
  /** The Gram was scaled by 4^−exponent (so σ = √λ·2^exponent). */
  readonly exponent: number;
  /** T's diagonal, off-diagonal and reflector scales (n f64 each), and the reflectors (n × n). */
  readonly d: number;
  readonly e: number;
  readonly tau: number;
  readonly reflectors: number;
}

/**
 * Forms the short-side Gram, scales it by a power of four to a largest diagonal near 1 (exact;
 * the Householder sums would overflow or underflow on factors far from 1), tridiagonalises it
 * and finds the eigenvalues: σ = √λ times the scale's root.
 */
function tridiagonalForm(kernels: Kernels, m: KernelMatrix): TridiagonalForm {
  const tall = m.rows > m.cols, n = Math.min(m.rows, m.cols);
  const x = kernels.exports;
  const g = kernels.alloc(n * n * 8);
  const scratch = kernels.alloc(Math.max(n * x.gramBlockWidth(n) * 12, 8 * n));
  x.gramOf(m.ptr, m.dtype, m.rows, m.cols, tall, g, scratch);
  const view = kernels.f64(g, n * n);
  const diagonal = () => Float64Array.from({ length: n }, (_, i) => view[i * n + i]);
  if (!diagonal().every(Number.isFinite)) {
    // A NaN or infinite element (callers name it), never mistaken for a zero dimension.
    return { n, sigma: new Float64Array(n).fill(NaN) };
  }
  const exponent = scaleToUnit(view, n);
  const tolerance = pivotTolerance(diagonal(), Math.max(m.rows, m.cols));
  const d = kernels.alloc(n * 8), e = kernels.alloc(n * 8), tau = kernels.alloc(n * 8);
  x.tridiagonalize(g, n, d, e, tau, scratch);
  const lambda = kernels.alloc(n * 8), offDiagonal = kernels.alloc(n * 8);
  kernels.f64(lambda, n).set(kernels.f64(d, n));
  kernels.f64(offDiagonal, n).set(kernels.f64(e, n));
  if (x.tridiagonalEigenvalues(lambda, offDiagonal, n) !== 0) {
    throw new BackendError(
      `the eigenvalues of a ${m.rows}×${m.cols} matrix's Gram did not converge`,
    );
  }
  const sigma = Float64Array.from(kernels.f64(lambda, n), (l) => l > tolerance ? Math.sqrt(l) : 0);
  sigma.sort().reverse();
  scaleByPowerOfTwo(sigma, exponent);
  return { n, sigma, kernel: { exponent, d, e, tau, reflectors: g } };
}

/** A carried tridiagonal form back in kernel memory. */
function unpacked(kernels: Kernels, n: number, tridiagonal: Float64Array): KernelTridiagonal {
  const d = kernels.alloc(n * 8), e = kernels.alloc(n * 8), tau = kernels.alloc(n * 8);
  const reflectors = kernels.alloc(n * n * 8);
  kernels.f64(d, n).set(tridiagonal.subarray(1, 1 + n));
  kernels.f64(e, n).set(tridiagonal.subarray(1 + n, 1 + 2 * n));
  kernels.f64(tau, n).set(tridiagonal.subarray(1 + 2 * n, 1 + 3 * n));
  const c = kernels.f64(reflectors, n * n);
  for (let k = 0, at = 1 + 3 * n; k < n; at += n - k - 1, k++) {
    c.set(tridiagonal.subarray(at, at + n - k - 1), k * n + k + 1);
  }
  return { exponent: tridiagonal[0], d, e, tau, reflectors };
}

/**
 * The singular pairs of the kept dimensions of a full matrix in kernel memory, as LoRA factors
 * in f32: up = U[:, keep]·diag(√σ) (rows × k) and down = diag(√σ)·V[:, keep]ᵀ (k × cols), so
 * up·down is the matrix restricted to the kept dimensions. `spectrum` is the matrix's own (from
 * {@link fullMatrixSpectrum}); `keep` indexes its singular values, ascending; a kept σ = 0 gives
 * zero vectors. Uses kernel memory from its current top.
 *
 * @example
 * ```ts
 * import { Kernels } from "./wasm/kernels.ts";
 * import { fullMatrixSingularPairs, fullMatrixSpectrum } from "./full_matrix_svd.ts";
 * const kernels = await Kernels.load();
 * const m = { ptr: kernels.put(new Uint8Array(new Float32Array([3, 0, 0, 4]).buffer)), dtype: 2, rows: 2, cols: 2 };
 * const { up, down } = fullMatrixSingularPairs(kernels, m, fullMatrixSpectrum(kernels, m), [0]);
 * const u = new Float32Array(up.bytes.slice().buffer), d = new Float32Array(down.bytes.slice().buffer);
 * // The top pair rebuilds the 4: up·down = [[0, 0], [0, 4]].
 * if (Math.abs(u[1] * d[1] - 4) > 1e-6 || Math.abs(u[0] * d[0]) > 1e-6) throw new Error();
 * ```
 */
export function fullMatrixSingularPairs(
  kernels: Kernels,
  m: KernelMatrix,
  spectrum: MatrixSpectrum,
  keep: readonly number[],
): RebuiltFactors {
  const n = Math.min(m.rows, m.cols);
  const { sigma, tridiagonal } = spectrum;
  const packed = packedLength(n);
  if (sigma.length !== n || (tridiagonal.length !== packed && tridiagonal.length !== 0)) {
    throw new BackendError(
      `singular pairs of a ${m.rows}×${m.cols} matrix: its spectrum has ${sigma.length} values and a tridiagonal of ${tridiagonal.length}`,
    );
  }
  const wanted = keep.filter((j) => sigma[j] > 0);
  const vectors = shortSideVectors(kernels, m, spectrum, wanted);
  // Row t: the short-side vector of kept dimension t (zero for σ = 0), its √σ, as f32 pairs.
  const k = keep.length, g = keep.map((j) => sigma[j] > 0 ? Math.sqrt(sigma[j]) : 0);
  const direct = new Float32Array(k * n), through = new Float32Array(k * n);
  let w = 0;
  keep.forEach((_, t) => {
    if (g[t] === 0) return;
    for (let i = 0; i < n; i++) {
      direct[t * n + i] = g[t] * vectors[w * n + i]; // √σ·u
      through[t * n + i] = vectors[w * n + i] / g[t]; // u/√σ, for the long side
    }
    w++;
  });
  const long = longSide(kernels, m, through, k);
  // The short side as stored: up is rows × k (column t), down is k × cols (row t).
  if (m.rows > m.cols) return { up: long, down: f32Data(direct) };
  const up = new Float32Array(k * n);
  for (let t = 0; t < k; t++) for (let i = 0; i < n; i++) up[i * k + t] = direct[t * n + i];
  return { up: f32Data(up), down: long };
}

/** f32 values as factor data. */
function f32Data(values: Float32Array): FloatData {
  return { dtype: "F32", bytes: new Uint8Array(values.buffer) };
}

/**
 * Unit eigenvectors of the short-side Gram for the wanted dimensions (σ > 0), as rows
 * (wanted × n): inverse iteration on the spectrum's tridiagonal (carried, or formed again from
 * the same bytes), taken back through its reflectors.
 */
function shortSideVectors(
  kernels: Kernels,
  m: KernelMatrix,
  { sigma, tridiagonal }: MatrixSpectrum,
  wanted: readonly number[],
): Float64Array {
  const n = Math.min(m.rows, m.cols), x = kernels.exports;
  if (wanted.length === 0) return new Float64Array(0);
  const vectors = kernels.alloc(wanted.length * n * 8);
  const form = tridiagonal.length > 0
    ? unpacked(kernels, n, tridiagonal)
    : tridiagonalForm(kernels, m).kernel!;
  // Eigenvalues of the scaled Gram: (σ·2^−exponent)², the scaling exact.
  const scaled = Float64Array.from(wanted, (j) => sigma[j]);
  scaleByPowerOfTwo(scaled, -form.exponent);
  const lambdas = kernels.alloc(wanted.length * 8);
  kernels.f64(lambdas, wanted.length).set(scaled.map((s) => s * s));
  const work = kernels.alloc(5 * n * 8);
  x.eigenvectorsAt(form.d, form.e, n, lambdas, wanted.length, vectors, work);
  x.applyReflectors(form.reflectors, n, form.tau, vectors, wanted.length);
  return kernels.f64(vectors, wanted.length * n).slice();
}

/**
 * The long side of the kept pairs, f32: down = Tᵀ·M (k × cols) for a wide M, up = M·T
 * (rows × k) for a tall one, T's rows being the short-side vectors over √σ (`through`, k × n),
 * by the rebuild kernels, which round once to f32.
 */
function longSide(kernels: Kernels, m: KernelMatrix, through: Float32Array, k: number): FloatData {
  const n = Math.min(m.rows, m.cols), bytes = k * Math.max(m.rows, m.cols) * 4;
  if (k === 0) return { dtype: "F32", bytes: new Uint8Array(0) };
  const x = kernels.exports, ldt = (k + 3) & ~3;
  const result = kernels.alloc(bytes);
  const scratch = kernels.alloc(Math.max(UP_ROWS * (n + 2 * ldt), DOWN_COLUMNS * (n + k)) * 4);
  if (m.rows <= m.cols) {
    const tat = kernels.alloc(through.byteLength);
    kernels.f32(tat, through.length).set(through);
    x.rebuildDown(m.ptr, m.dtype, m.rows, m.cols, tat, k, result, DTYPE_CODES.F32, scratch);
  } else {
    // T as columns, its rows padded to whole SIMD vectors.
    const tb = new Float32Array(n * ldt);
    for (let t = 0; t < k; t++) for (let i = 0; i < n; i++) tb[i * ldt + t] = through[t * n + i];
    const tbPtr = kernels.alloc(tb.byteLength);
    kernels.f32(tbPtr, tb.length).set(tb);
    x.rebuildUp(m.ptr, m.dtype, m.rows, m.cols, tbPtr, ldt, k, result, DTYPE_CODES.F32, scratch);
  }
  return { dtype: "F32", bytes: kernels.u8(result, bytes).slice() };
}

/** Row and column blocks of the kernels' rebuildUp / rebuildDown (their scratch sizes). */
const UP_ROWS = 64, DOWN_COLUMNS = 256;
