// Dense products for the decomposition (Gram matrices, f64) and the rebuild (B·T, Tᵀ·A, f32).

import { BF16, decodeF32, decodeRowF64, decodeTransposedF64, dtypeSize, F16, F64 } from "./decode";
import { encodeBF16, encodeF16 } from "./encode";

/** Horizontal sum of an f64x2. */
function sum2(v: v128): f64 {
  return f64x2.extract_lane(v, 0) + f64x2.extract_lane(v, 1);
}

/**
 * G = X·Xᵀ for X with r rows of `stride` f64 (stride even, padding zero): G is r × r f64,
 * symmetric. Blocked over columns so that the r row slices stay in cache (see gramBlock); a
 * fixed summation order makes the result independent of everything but the input.
 */
export function gramRows(x: usize, r: i32, stride: i32, g: usize): void {
  const n = <usize> r, width = <usize> stride, block = gramBlockWidth(n);
  memory.fill(g, 0, (n * n) << 3);
  for (let c0: usize = 0; c0 < width; c0 += block) {
    const w = c0 + block < width ? block : width - c0;
    gramBlock(x + (c0 << 3), n, width << 3, w << 3, g);
  }
  symmetrize(g, n);
}

/**
 * G = X·Xᵀ (r × r f64) straight from stored values: X is `src` (rows × cols of a dtype code) or,
 * when `transposed`, its transpose. Each column block of X is decoded into `scratch`
 * (r · gramBlockWidth(r) f64, then as many f32) and summed as gramRows sums it, so G is
 * bit-identical to decoding X into rows of even length and calling gramRows, without the pass
 * over a full f64 copy. F16, BF16 and F32 values go through the fast f32 decoding (they are exact
 * in f32); F64 values are copied.
 */
export function gramOf(
  src: usize,
  dtype: i32,
  rows: i32,
  cols: i32,
  transposed: bool,
  g: usize,
  scratch: usize,
): void {
  const n = <usize> (transposed ? cols : rows), length = <usize> (transposed ? rows : cols);
  const width = length + (length & 1), block = gramBlockWidth(n), size = dtypeSize(dtype);
  const f32 = scratch + ((n * block) << 3);
  memory.fill(g, 0, (n * n) << 3);
  for (let c0: usize = 0; c0 < width; c0 += block) {
    const w = c0 + block < width ? block : width - c0;
    const valid = c0 + w < length ? w : length - c0;
    if (transposed) {
      const at = src + c0 * n * size;
      if (dtype == F64) decodeTransposedF64(at, scratch, <i32> valid, <i32> n, <i32> w, dtype);
      else {
        decodeF32(at, f32, <f64> (valid * n), dtype);
        promoteTransposed(f32, valid, n, scratch, w);
      }
    } else {
      for (let p: usize = 0; p < n; p++) {
        const at = src + (p * length + c0) * size, row = scratch + ((p * w) << 3);
        if (dtype == F64) memory.copy(row, at, valid << 3);
        else decodeRowF64(at, row, valid, dtype);
        if (valid < w) memory.fill(row + (valid << 3), 0, (w - valid) << 3);
      }
    }
    gramBlock(scratch, n, w << 3, w << 3, g);
  }
  symmetrize(g, n);
}

/**
 * The transpose of a rows × cols f32 matrix as f64: dst is cols × stride (stride ≥ rows, even),
 * dst[c·stride + r] = src[r·cols + c], padding zeroed. Two source rows at a time give one f64x2
 * store per column.
 */
function promoteTransposed(src: usize, rows: usize, cols: usize, dst: usize, stride: usize): void {
  for (let c: usize = 0; c < cols; c++) {
    for (let r = rows; r < stride; r++) store<f64>(dst + ((c * stride + r) << 3), 0);
  }
  const vec = cols & ~(<usize> 3), ld = stride << 3;
  let r: usize = 0;
  for (; r + 2 <= rows; r += 2) {
    const a0 = src + ((r * cols) << 2), b0 = a0 + (cols << 2);
    let c: usize = 0;
    for (; c < vec; c += 4) {
      const a = v128.load(a0 + (c << 2)), b = v128.load(b0 + (c << 2));
      const lo = i32x4.shuffle(a, b, 0, 4, 1, 5), hi = i32x4.shuffle(a, b, 2, 6, 3, 7);
      const d = dst + ((c * stride + r) << 3);
      v128.store(d, f64x2.promote_low_f32x4(lo));
      v128.store(d + ld, f64x2.promote_low_f32x4(i32x4.shuffle(lo, lo, 2, 3, 2, 3)));
      v128.store(d + 2 * ld, f64x2.promote_low_f32x4(hi));
      v128.store(d + 3 * ld, f64x2.promote_low_f32x4(i32x4.shuffle(hi, hi, 2, 3, 2, 3)));
    }
    for (; c < cols; c++) {
      const d = dst + ((c * stride + r) << 3);
      store<f64>(d, <f64> load<f32>(a0 + (c << 2)));
      store<f64>(d + 8, <f64> load<f32>(b0 + (c << 2)));
    }
  }
  for (; r < rows; r++) {
    for (let c: usize = 0; c < cols; c++) {
      store<f64>(dst + ((c * stride + r) << 3), <f64> load<f32>(src + ((r * cols + c) << 2)));
    }
  }
}

/** Columns per block of gramRows / gramOf: ~32 KiB of f64 rows, within an L1 data cache (even, at least 32). */
export function gramBlockWidth(n: usize): usize {
  const block = (<usize> 4096 / n) & ~(<usize> 1);
  return block < 32 ? 32 : block;
}

/**
 * Adds X·Xᵀ over one column block to the upper triangle of g: X has n rows `pitch` bytes apart,
 * `bytes` (a multiple of 16) of each taken. Four rows at a time: the ten entries of their own
 * upper triangle, then the rows after them two by two (eight sums in registers, six loads per
 * sixteen multiply-adds); two by two for the rows left. Every sum runs over
 * the block in order of the column pairs (one per f64x2 lane), so each entry of g gets the same
 * additions whichever tile computes it.
 */
function gramBlock(x: usize, n: usize, pitch: usize, bytes: usize, g: usize): void {
  let i: usize = 0;
  for (; i + 4 <= n; i += 4) {
    gramTriangle4(x, n, pitch, bytes, g, i);
    for (let j = i + 4; j < n; j += 2) gramTile4x2(x, n, pitch, bytes, g, i, j);
  }
  for (; i < n; i += 2) {
    for (let j = i; j < n; j += 2) gramTile2x2(x, n, pitch, bytes, g, i, j);
  }
}

/** Adds to g the upper triangle of rows i…i+3 times themselves (ten sums in registers). */
@inline function gramTriangle4(x: usize, n: usize, pitch: usize, bytes: usize, g: usize, i: usize): void {
  const x0 = x + i * pitch, x1 = x0 + pitch, x2 = x1 + pitch, x3 = x2 + pitch;
  let a00 = f64x2.splat(0), a01 = f64x2.splat(0), a02 = f64x2.splat(0), a03 = f64x2.splat(0);
  let a11 = f64x2.splat(0), a12 = f64x2.splat(0), a13 = f64x2.splat(0);
  let a22 = f64x2.splat(0), a23 = f64x2.splat(0), a33 = f64x2.splat(0);
  for (let o: usize = 0; o < bytes; o += 16) {
    const r0 = v128.load(x0 + o), r1 = v128.load(x1 + o);
    const r2 = v128.load(x2 + o), r3 = v128.load(x3 + o);
    a00 = f64x2.add(a00, f64x2.mul(r0, r0));
    a01 = f64x2.add(a01, f64x2.mul(r0, r1));
    a02 = f64x2.add(a02, f64x2.mul(r0, r2));
    a03 = f64x2.add(a03, f64x2.mul(r0, r3));
    a11 = f64x2.add(a11, f64x2.mul(r1, r1));
    a12 = f64x2.add(a12, f64x2.mul(r1, r2));
    a13 = f64x2.add(a13, f64x2.mul(r1, r3));
    a22 = f64x2.add(a22, f64x2.mul(r2, r2));
    a23 = f64x2.add(a23, f64x2.mul(r2, r3));
    a33 = f64x2.add(a33, f64x2.mul(r3, r3));
  }
  const g0 = g + ((i * n + i) << 3), g1 = g0 + ((n + 1) << 3);
  const g2 = g1 + ((n + 1) << 3), g3 = g2 + ((n + 1) << 3);
  store<f64>(g0, load<f64>(g0) + sum2(a00));
  store<f64>(g0, load<f64>(g0, 8) + sum2(a01), 8);
  store<f64>(g0, load<f64>(g0, 16) + sum2(a02), 16);
  store<f64>(g0, load<f64>(g0, 24) + sum2(a03), 24);
  store<f64>(g1, load<f64>(g1) + sum2(a11));
  store<f64>(g1, load<f64>(g1, 8) + sum2(a12), 8);
  store<f64>(g1, load<f64>(g1, 16) + sum2(a13), 16);
  store<f64>(g2, load<f64>(g2) + sum2(a22));
  store<f64>(g2, load<f64>(g2, 8) + sum2(a23), 8);
  store<f64>(g3, load<f64>(g3) + sum2(a33));
}

/** Adds `value` to the f64 at `at`. */
@inline function addAt(at: usize, value: f64): void {
  store<f64>(at, load<f64>(at) + value);
}

/**
 * Rows i…i+3 times rows j, j+1, with j ≥ i + 4 (every entry above the diagonal); j + 1 may be n:
 * then row j is used twice and that column's sums are dropped.
 */
@inline function gramTile4x2(x: usize, n: usize, pitch: usize, bytes: usize, g: usize, i: usize, j: usize): void {
  const j1 = j + 1 < n ? j + 1 : j;
  const x0 = x + i * pitch, x1 = x0 + pitch, x2 = x1 + pitch, x3 = x2 + pitch;
  const y0 = x + j * pitch, y1 = x + j1 * pitch;
  let a00 = f64x2.splat(0), a01 = f64x2.splat(0), a10 = f64x2.splat(0), a11 = f64x2.splat(0);
  let a20 = f64x2.splat(0), a21 = f64x2.splat(0), a30 = f64x2.splat(0), a31 = f64x2.splat(0);
  for (let o: usize = 0; o < bytes; o += 16) {
    const u = v128.load(y0 + o), v = v128.load(y1 + o);
    const r0 = v128.load(x0 + o), r1 = v128.load(x1 + o);
    a00 = f64x2.add(a00, f64x2.mul(r0, u));
    a01 = f64x2.add(a01, f64x2.mul(r0, v));
    a10 = f64x2.add(a10, f64x2.mul(r1, u));
    a11 = f64x2.add(a11, f64x2.mul(r1, v));
    const r2 = v128.load(x2 + o), r3 = v128.load(x3 + o);
    a20 = f64x2.add(a20, f64x2.mul(r2, u));
    a21 = f64x2.add(a21, f64x2.mul(r2, v));
    a30 = f64x2.add(a30, f64x2.mul(r3, u));
    a31 = f64x2.add(a31, f64x2.mul(r3, v));
  }
  const g0 = g + ((i * n + j) << 3), ld = n << 3;
  addAt(g0, sum2(a00));
  addAt(g0 + ld, sum2(a10));
  addAt(g0 + 2 * ld, sum2(a20));
  addAt(g0 + 3 * ld, sum2(a30));
  if (j1 != j) {
    addAt(g0 + 8, sum2(a01));
    addAt(g0 + ld + 8, sum2(a11));
    addAt(g0 + 2 * ld + 8, sum2(a21));
    addAt(g0 + 3 * ld + 8, sum2(a31));
  }
}

/** Rows i, i+1 times rows j, j+1 (either pair may stop at n). */
@inline function gramTile2x2(x: usize, n: usize, pitch: usize, bytes: usize, g: usize, i: usize, j: usize): void {
  const i1 = i + 1 < n ? i + 1 : i;
  const j1 = j + 1 < n ? j + 1 : j;
  const xi = x + i * pitch, xi1 = x + i1 * pitch;
  const xj = x + j * pitch, xj1 = x + j1 * pitch;
  let a00 = f64x2.splat(0), a01 = f64x2.splat(0);
  let a10 = f64x2.splat(0), a11 = f64x2.splat(0);
  for (let o: usize = 0; o < bytes; o += 16) {
    const vi = v128.load(xi + o), vi1 = v128.load(xi1 + o);
    const vj = v128.load(xj + o), vj1 = v128.load(xj1 + o);
    a00 = f64x2.add(a00, f64x2.mul(vi, vj));
    a01 = f64x2.add(a01, f64x2.mul(vi, vj1));
    a10 = f64x2.add(a10, f64x2.mul(vi1, vj));
    a11 = f64x2.add(a11, f64x2.mul(vi1, vj1));
  }
  const gij = g + ((i * n + j) << 3);
  store<f64>(gij, load<f64>(gij) + sum2(a00));
  if (j1 != j) store<f64>(gij + 8, load<f64>(gij + 8) + sum2(a01));
  if (i1 != i) {
    const g1 = g + ((i1 * n + j) << 3);
    if (j >= i1) store<f64>(g1, load<f64>(g1) + sum2(a10));
    if (j1 != j) store<f64>(g1 + 8, load<f64>(g1 + 8) + sum2(a11));
  }
}

/** Copies the upper triangle of the n × n f64 matrix g to the lower one. */
function symmetrize(g: usize, n: usize): void {
  for (let i: usize = 0; i < n; i++) {
    for (let j: usize = 0; j < i; j++) {
      store<f64>(g + ((i * n + j) << 3), load<f64>(g + ((j * n + i) << 3)));
    }
  }
}

/**
 * C = A·B (f64): C is m × n and B k × n, row-major with leading dimensions ldc and ldb; A is
 * m × k with element (i, p) at a + 8·(i·aRow + p·aCol), so a row-major A has (aRow, aCol) =
 * (lda, 1) and the transpose of a row-major X (k × m) has (1, ldx). Eight columns of a row of C
 * are summed in registers over p, in order of p, so the inner loop only loads.
 */
export function matmulF64(
  a: usize,
  aRow: i32,
  aCol: i32,
  b: usize,
  ldb: i32,
  c: usize,
  ldc: i32,
  m: i32,
  k: i32,
  n: i32,
): void {
  const cols = <usize> n, inner = <usize> k, step = <usize> ldb << 3;
  const aStep = <usize> aCol << 3;
  const vec = cols & ~(<usize> 7);
  for (let i: usize = 0; i < <usize> m; i++) {
    const ai = a + ((i * <usize> aRow) << 3), ci = c + ((i * <usize> ldc) << 3);
    let j: usize = 0;
    for (; j < vec; j += 8) {
      let s0 = f64x2.splat(0), s1 = f64x2.splat(0), s2 = f64x2.splat(0), s3 = f64x2.splat(0);
      let ap = ai, bp = b + (j << 3);
      for (let p: usize = 0; p < inner; p++) {
        const x = v128.load64_splat(ap);
        s0 = f64x2.add(s0, f64x2.mul(x, v128.load(bp)));
        s1 = f64x2.add(s1, f64x2.mul(x, v128.load(bp, 16)));
        s2 = f64x2.add(s2, f64x2.mul(x, v128.load(bp, 32)));
        s3 = f64x2.add(s3, f64x2.mul(x, v128.load(bp, 48)));
        ap += aStep;
        bp += step;
      }
      const cj = ci + (j << 3);
      v128.store(cj, s0);
      v128.store(cj, s1, 16);
      v128.store(cj, s2, 32);
      v128.store(cj, s3, 48);
    }
    for (; j < cols; j++) {
      let s: f64 = 0;
      for (let p: usize = 0; p < inner; p++) {
        s += load<f64>(ai + p * aStep) * load<f64>(b + p * step + (j << 3));
      }
      store<f64>(ci + (j << 3), s);
    }
  }
}

/** Columns of B per tile of matmulF32: 128 f32 × up to ~64 rows of B stay in L1. */
const TILE: usize = 128;

/**
 * C = A·B in f32 (row-major, leading dimensions lda, ldb, ldc): C is m × n, A m × k, B k × n.
 * Each value of C is summed over p in order of p from zero, without fused multiply-adds, so the
 * result depends on the inputs only. Four rows of C times eight columns are summed at once (eight
 * independent sums hide the adder's latency, and each load of B serves four rows), over tiles of
 * B's columns that stay in cache. Used where the result is rounded to an output dtype anyway (the
 * rebuild of the kept factors: B·T with n = k′ small, Tᵀ·A with m = k′ small).
 */
export function matmulF32(
  a: usize,
  lda: i32,
  b: usize,
  ldb: i32,
  c: usize,
  ldc: i32,
  m: i32,
  k: i32,
  n: i32,
): void {
  const rows = <usize> m, cols = <usize> n, inner = <usize> k;
  const sa = <usize> lda << 2, sb = <usize> ldb << 2, sc = <usize> ldc << 2;
  for (let j0: usize = 0; j0 < cols; j0 += TILE) {
    const j1 = j0 + TILE < cols ? j0 + TILE : cols;
    let i: usize = 0;
    for (; i + 4 <= rows; i += 4) {
      const ai = a + i * sa, ci = c + i * sc;
      let j = j0;
      for (; j + 12 <= j1; j += 12) block4x12(ai, sa, b + (j << 2), sb, ci + (j << 2), sc, inner);
      for (; j + 8 <= j1; j += 8) block4x8(ai, sa, b + (j << 2), sb, ci + (j << 2), sc, inner);
      for (; j + 4 <= j1; j += 4) block4x4(ai, sa, b + (j << 2), sb, ci + (j << 2), sc, inner);
      for (; j < j1; j++) {
        for (let r: usize = 0; r < 4; r++) dotColumn(ai + r * sa, b + (j << 2), sb, ci + r * sc + (j << 2), inner);
      }
    }
    for (; i < rows; i++) {
      const ai = a + i * sa, ci = c + i * sc;
      let j = j0;
      for (; j + 16 <= j1; j += 16) block1x16(ai, b + (j << 2), sb, ci + (j << 2), inner);
      for (; j + 4 <= j1; j += 4) {
        let s = f32x4.splat(0);
        let bp = b + (j << 2);
        for (let p: usize = 0; p < inner; p++) {
          s = f32x4.add(s, f32x4.mul(v128.load32_splat(ai + (p << 2)), v128.load(bp)));
          bp += sb;
        }
        v128.store(ci + (j << 2), s);
      }
      for (; j < j1; j++) dotColumn(ai, b + (j << 2), sb, ci + (j << 2), inner);
    }
  }
}

/** c[r][0..12) = Σ_p a[r][p]·b[p][0..12) for four rows r. */
@inline function block4x12(a: usize, sa: usize, b: usize, sb: usize, c: usize, sc: usize, k: usize): void {
  let s00 = f32x4.splat(0), s01 = f32x4.splat(0), s02 = f32x4.splat(0);
  let s10 = f32x4.splat(0), s11 = f32x4.splat(0), s12 = f32x4.splat(0);
  let s20 = f32x4.splat(0), s21 = f32x4.splat(0), s22 = f32x4.splat(0);
  let s30 = f32x4.splat(0), s31 = f32x4.splat(0), s32 = f32x4.splat(0);
  const a1 = a + sa, a2 = a1 + sa, a3 = a2 + sa;
  let bp = b;
  for (let o: usize = 0; o < (k << 2); o += 4) {
    const b0 = v128.load(bp), b1 = v128.load(bp, 16), b2 = v128.load(bp, 32);
    const x0 = v128.load32_splat(a + o);
    s00 = f32x4.add(s00, f32x4.mul(x0, b0));
    s01 = f32x4.add(s01, f32x4.mul(x0, b1));
    s02 = f32x4.add(s02, f32x4.mul(x0, b2));
    const x1 = v128.load32_splat(a1 + o);
    s10 = f32x4.add(s10, f32x4.mul(x1, b0));
    s11 = f32x4.add(s11, f32x4.mul(x1, b1));
    s12 = f32x4.add(s12, f32x4.mul(x1, b2));
    const x2 = v128.load32_splat(a2 + o);
    s20 = f32x4.add(s20, f32x4.mul(x2, b0));
    s21 = f32x4.add(s21, f32x4.mul(x2, b1));
    s22 = f32x4.add(s22, f32x4.mul(x2, b2));
    const x3 = v128.load32_splat(a3 + o);
    s30 = f32x4.add(s30, f32x4.mul(x3, b0));
    s31 = f32x4.add(s31, f32x4.mul(x3, b1));
    s32 = f32x4.add(s32, f32x4.mul(x3, b2));
    bp += sb;
  }
  v128.store(c, s00);
  v128.store(c, s01, 16);
  v128.store(c, s02, 32);
  v128.store(c + sc, s10);
  v128.store(c + sc, s11, 16);
  v128.store(c + sc, s12, 32);
  v128.store(c + 2 * sc, s20);
  v128.store(c + 2 * sc, s21, 16);
  v128.store(c + 2 * sc, s22, 32);
  v128.store(c + 3 * sc, s30);
  v128.store(c + 3 * sc, s31, 16);
  v128.store(c + 3 * sc, s32, 32);
}

/** c[r][0..8) = Σ_p a[r][p]·b[p][0..8) for four rows r. */
@inline function block4x8(a: usize, sa: usize, b: usize, sb: usize, c: usize, sc: usize, k: usize): void {
  let s00 = f32x4.splat(0), s01 = f32x4.splat(0), s10 = f32x4.splat(0), s11 = f32x4.splat(0);
  let s20 = f32x4.splat(0), s21 = f32x4.splat(0), s30 = f32x4.splat(0), s31 = f32x4.splat(0);
  const a1 = a + sa, a2 = a1 + sa, a3 = a2 + sa;
  let bp = b;
  for (let o: usize = 0; o < (k << 2); o += 4) {
    const b0 = v128.load(bp), b1 = v128.load(bp, 16);
    const x0 = v128.load32_splat(a + o), x1 = v128.load32_splat(a1 + o);
    s00 = f32x4.add(s00, f32x4.mul(x0, b0));
    s01 = f32x4.add(s01, f32x4.mul(x0, b1));
    s10 = f32x4.add(s10, f32x4.mul(x1, b0));
    s11 = f32x4.add(s11, f32x4.mul(x1, b1));
    const x2 = v128.load32_splat(a2 + o), x3 = v128.load32_splat(a3 + o);
    s20 = f32x4.add(s20, f32x4.mul(x2, b0));
    s21 = f32x4.add(s21, f32x4.mul(x2, b1));
    s30 = f32x4.add(s30, f32x4.mul(x3, b0));
    s31 = f32x4.add(s31, f32x4.mul(x3, b1));
    bp += sb;
  }
  v128.store(c, s00);
  v128.store(c, s01, 16);
  v128.store(c + sc, s10);
  v128.store(c + sc, s11, 16);
  v128.store(c + 2 * sc, s20);
  v128.store(c + 2 * sc, s21, 16);
  v128.store(c + 3 * sc, s30);
  v128.store(c + 3 * sc, s31, 16);
}

/** c[r][0..4) = Σ_p a[r][p]·b[p][0..4) for four rows r. */
@inline function block4x4(a: usize, sa: usize, b: usize, sb: usize, c: usize, sc: usize, k: usize): void {
  let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
  const a1 = a + sa, a2 = a1 + sa, a3 = a2 + sa;
  let bp = b;
  for (let o: usize = 0; o < (k << 2); o += 4) {
    const b0 = v128.load(bp);
    s0 = f32x4.add(s0, f32x4.mul(v128.load32_splat(a + o), b0));
    s1 = f32x4.add(s1, f32x4.mul(v128.load32_splat(a1 + o), b0));
    s2 = f32x4.add(s2, f32x4.mul(v128.load32_splat(a2 + o), b0));
    s3 = f32x4.add(s3, f32x4.mul(v128.load32_splat(a3 + o), b0));
    bp += sb;
  }
  v128.store(c, s0);
  v128.store(c + sc, s1);
  v128.store(c + 2 * sc, s2);
  v128.store(c + 3 * sc, s3);
}

/** c[0..16) = Σ_p a[p]·b[p][0..16) for one row. */
@inline function block1x16(a: usize, b: usize, sb: usize, c: usize, k: usize): void {
  let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
  let bp = b;
  for (let o: usize = 0; o < (k << 2); o += 4) {
    const x = v128.load32_splat(a + o);
    s0 = f32x4.add(s0, f32x4.mul(x, v128.load(bp)));
    s1 = f32x4.add(s1, f32x4.mul(x, v128.load(bp, 16)));
    s2 = f32x4.add(s2, f32x4.mul(x, v128.load(bp, 32)));
    s3 = f32x4.add(s3, f32x4.mul(x, v128.load(bp, 48)));
    bp += sb;
  }
  v128.store(c, s0);
  v128.store(c, s1, 16);
  v128.store(c, s2, 32);
  v128.store(c, s3, 48);
}

/** c = Σ_p a[p]·b[p] over a column of b (stride sb). */
@inline function dotColumn(a: usize, b: usize, sb: usize, c: usize, k: usize): void {
  let s: f32 = 0;
  let bp = b;
  for (let p: usize = 0; p < k; p++) {
    s += load<f32>(a + (p << 2)) * load<f32>(bp);
    bp += sb;
  }
  store<f32>(c, s);
}

/** Copies a rows × cols f32 matrix with row stride `stride` to a contiguous one (no overlap). */
export function compactRowsF32(src: usize, stride: i32, dst: usize, rows: i32, cols: i32): void {
  const n = <usize> cols, bytes = n << 2, vec = (n & ~(<usize> 3)) << 2, ld = <usize> stride << 2;
  for (let r: usize = 0; r < <usize> rows; r++) {
    const s = src + r * ld, d = dst + r * bytes;
    let o: usize = 0;
    for (; o < vec; o += 16) v128.store(d + o, v128.load(s + o));
    for (; o < bytes; o += 4) store<f32>(d + o, load<f32>(s + o));
  }
}

/** Rows of B per step of rebuildUp (their f32 copy and products stay in L1). */
const UP_ROWS: usize = 64;
/** Columns of A per step of rebuildDown. */
const DOWN_COLUMNS: usize = 256;

/** Bytes per element of an output dtype code (F16, BF16 or F32). */
@inline function outputSize(code: i32): usize {
  return code == F16 || code == BF16 ? 2 : 4;
}

/** n f32 at src to an output dtype code at dst. */
function encodeTo(src: usize, dst: usize, n: usize, code: i32): void {
  if (code == F16) encodeF16(src, dst, <i32> n);
  else if (code == BF16) encodeBF16(src, dst, <i32> n);
  else memory.copy(dst, src, n << 2);
}

/**
 * up = B·T encoded: B (out × r, dtype code `dtype`) times T (r × ldt f32, columns past `kept`
 * zero), the out × kept result written at dst in output dtype `code`. Rows of B go through in
 * blocks of UP_ROWS — decoded, multiplied (matmulF32), compacted to `kept` columns, encoded — so
 * nothing the size of B or of the result passes through memory in f32, and every value is
 * bit-identical to decodeF32 + matmulF32 + encoding of the whole. scratch: UP_ROWS·(r + 2·ldt) f32.
 */
export function rebuildUp(
  src: usize,
  dtype: i32,
  out: i32,
  r: i32,
  t: usize,
  ldt: i32,
  kept: i32,
  dst: usize,
  code: i32,
  scratch: usize,
): void {
  const rows = <usize> out, n = <usize> r, width = <usize> ldt, k = <usize> kept;
  const b = scratch, product = b + ((UP_ROWS * n) << 2), compact = product + ((UP_ROWS * width) << 2);
  const inSize = dtypeSize(dtype), outSize = outputSize(code);
  for (let row0: usize = 0; row0 < rows; row0 += UP_ROWS) {
    const m = row0 + UP_ROWS < rows ? UP_ROWS : rows - row0;
    decodeF32(src + row0 * n * inSize, b, <f64> (m * n), dtype);
    matmulF32(b, r, t, ldt, product, ldt, <i32> m, r, ldt);
    let from = product;
    if (width != k) {
      compactRowsF32(product, ldt, compact, <i32> m, kept);
      from = compact;
    }
    encodeTo(from, dst + row0 * k * outSize, m * k, code);
  }
}

/**
 * down = Tᵀ·A encoded: Tᵀ (kept × r f32) times A (r × cols, dtype code `dtype`), the kept × cols
 * result written at dst in output dtype `code`. Columns of A go through in blocks of DOWN_COLUMNS
 * (decoded, multiplied, encoded), bit-identical to doing each step on the whole.
 * scratch: DOWN_COLUMNS·(r + kept) f32.
 */
export function rebuildDown(
  src: usize,
  dtype: i32,
  r: i32,
  cols: i32,
  tat: usize,
  kept: i32,
  dst: usize,
  code: i32,
  scratch: usize,
): void {
  const n = <usize> r, length = <usize> cols, k = <usize> kept, pitch = DOWN_COLUMNS << 2;
  const a = scratch, product = a + n * pitch;
  const inSize = dtypeSize(dtype), outSize = outputSize(code);
  for (let c0: usize = 0; c0 < length; c0 += DOWN_COLUMNS) {
    const w = c0 + DOWN_COLUMNS < length ? DOWN_COLUMNS : length - c0;
    for (let p: usize = 0; p < n; p++) {
      decodeF32(src + (p * length + c0) * inSize, a + p * pitch, <f64> w, dtype);
    }
    matmulF32(tat, r, a, <i32> DOWN_COLUMNS, product, <i32> DOWN_COLUMNS, kept, r, <i32> w);
    for (let j: usize = 0; j < k; j++) {
      encodeTo(product + j * pitch, dst + (j * length + c0) * outSize, w, code);
    }
  }
}
