// Passes over base weights: the sum of squares of the raw values (Frobenius norm), and, on
// weights decoded to f32 once, the product WᵀW·v (spectral norm by Lanczos) and W·Aᵀ (subspace
// scales).

import { BF16, F16, F32, F64, HALF_CONSTANTS, loadF64, magnitudes, rareHalves } from "./decode";

/** Columns after which f32 partial dot products move to f64 (bounds f32 rounding). */
const FLUSH: usize = 1024;

/** Sum of squares of n values; every square is exact and the sum is accumulated in f64. */
export function sumSquares(src: usize, n: f64, dtype: i32): f64 {
  const count = <usize> n;
  let acc0 = f64x2.splat(0), acc1 = f64x2.splat(0), acc2 = f64x2.splat(0), acc3 = f64x2.splat(0);
  let i: usize = 0;
  if (dtype == F16) {
    // |x| suffices; F16 squares are exact in f32 (22 significant bits, exponents in range).
    const c = HALF_CONSTANTS;
    const mask = v128.load(c), minNormal = v128.load(c, 16), normals = v128.load(c, 32);
    const rebias = v128.load(c, 48);
    const vec = count & ~(<usize> 7);
    for (; i < vec; i += 8) {
      const a = v128.and(v128.load(src + (i << 1)), mask);
      const rare = rareHalves(a, minNormal, normals);
      const lo = magnitudes(i32x4.extend_low_i16x8_u(a), rare, rebias);
      const hi = magnitudes(i32x4.extend_high_i16x8_u(a), rare, rebias);
      const ql = f32x4.mul(lo, lo), qh = f32x4.mul(hi, hi);
      acc0 = f64x2.add(acc0, f64x2.promote_low_f32x4(ql));
      acc1 = f64x2.add(acc1, f64x2.promote_low_f32x4(i32x4.shuffle(ql, ql, 2, 3, 2, 3)));
      acc2 = f64x2.add(acc2, f64x2.promote_low_f32x4(qh));
      acc3 = f64x2.add(acc3, f64x2.promote_low_f32x4(i32x4.shuffle(qh, qh, 2, 3, 2, 3)));
    }
  } else if (dtype == BF16) {
    // BF16 squares can leave the f32 range: square in f64.
    const vec = count & ~(<usize> 3);
    for (; i < vec; i += 4) {
      const f = i32x4.shl(v128.load_ext<u16>(src + (i << 1)), 16);
      const lo = f64x2.promote_low_f32x4(f);
      const hi = f64x2.promote_low_f32x4(i32x4.shuffle(f, f, 2, 3, 2, 3));
      acc0 = f64x2.add(acc0, f64x2.mul(lo, lo));
      acc1 = f64x2.add(acc1, f64x2.mul(hi, hi));
    }
  } else if (dtype == F32) {
    const vec = count & ~(<usize> 3);
    for (; i < vec; i += 4) {
      const lo = f64x2.promote_low_f32x4(v128.load_zero<u64>(src + (i << 2)));
      const hi = f64x2.promote_low_f32x4(v128.load_zero<u64>(src + (i << 2), 8));
      acc0 = f64x2.add(acc0, f64x2.mul(lo, lo));
      acc1 = f64x2.add(acc1, f64x2.mul(hi, hi));
    }
  } else if (dtype == F64) {
    const vec = count & ~(<usize> 3);
    for (; i < vec; i += 4) {
      const lo = v128.load(src + (i << 3)), hi = v128.load(src + (i << 3), 16);
      acc0 = f64x2.add(acc0, f64x2.mul(lo, lo));
      acc1 = f64x2.add(acc1, f64x2.mul(hi, hi));
    }
  }
  const acc = f64x2.add(f64x2.add(acc0, acc1), f64x2.add(acc2, acc3));
  let sum = f64x2.extract_lane(acc, 0) + f64x2.extract_lane(acc, 1);
  for (; i < count; i++) {
    const x = loadF64(src, i, dtype);
    sum += x * x;
  }
  return sum;
}

/** (lane0 + lane2, lane1 + lane3) of an f32x4, in f64. */
function widenPairs(a: v128): v128 {
  return f64x2.add(
    f64x2.promote_low_f32x4(a),
    f64x2.promote_low_f32x4(i32x4.shuffle(a, a, 2, 3, 2, 3)),
  );
}

function sum2(v: v128): f64 {
  return f64x2.extract_lane(v, 0) + f64x2.extract_lane(v, 1);
}

/**
 * y[q] = row_q · x for four f32 rows of `cols` values (any alignment); f32 partial sums are
 * moved to f64 every FLUSH columns.
 */
function dots4(r0: usize, r1: usize, r2: usize, r3: usize, x: usize, cols: usize, y: usize): void {
  const vec = (cols & ~(<usize> 3)) << 2;
  let t0 = f64x2.splat(0), t1 = f64x2.splat(0), t2 = f64x2.splat(0), t3 = f64x2.splat(0);
  for (let b0: usize = 0; b0 < vec; b0 += FLUSH << 2) {
    const b1 = b0 + (FLUSH << 2) < vec ? b0 + (FLUSH << 2) : vec;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    for (let o = b0; o < b1; o += 16) {
      const v = v128.load(x + o);
      a0 = f32x4.add(a0, f32x4.mul(v128.load(r0 + o), v));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(r1 + o), v));
      a2 = f32x4.add(a2, f32x4.mul(v128.load(r2 + o), v));
      a3 = f32x4.add(a3, f32x4.mul(v128.load(r3 + o), v));
    }
    t0 = f64x2.add(t0, widenPairs(a0));
    t1 = f64x2.add(t1, widenPairs(a1));
    t2 = f64x2.add(t2, widenPairs(a2));
    t3 = f64x2.add(t3, widenPairs(a3));
  }
  let y0 = sum2(t0), y1 = sum2(t1), y2 = sum2(t2), y3 = sum2(t3);
  for (let o = vec; o < cols << 2; o += 4) {
    const v = <f64> load<f32>(x + o);
    y0 += <f64> load<f32>(r0 + o) * v;
    y1 += <f64> load<f32>(r1 + o) * v;
    y2 += <f64> load<f32>(r2 + o) * v;
    y3 += <f64> load<f32>(r3 + o) * v;
  }
  store<f64>(y, y0);
  store<f64>(y, y1, 8);
  store<f64>(y, y2, 16);
  store<f64>(y, y3, 24);
}

/** Row pointers of a block of up to four rows (missing rows repeat the first). */
function rowAt(w: usize, i: usize, q: usize, count: usize, bytes: usize): usize {
  return w + (q < count ? i + q : i) * bytes;
}

/**
 * z = WᵀW·v in one pass over W (rows × cols f32, row-major): per row wᵢ, yᵢ = wᵢ·v and
 * z += yᵢ·wᵢ, four rows at a time so that each block is read from memory once. v and z hold
 * cols f32; y is scratch for 4 f64.
 */
export function gramMatvec(w: usize, rows: i32, cols: i32, v: usize, z: usize, y: usize): void {
  const n = <usize> cols, bytes = n << 2, total = <usize> rows;
  const vec = (n & ~(<usize> 3)) << 2;
  memory.fill(z, 0, bytes);
  for (let i: usize = 0; i < total; i += 4) {
    const count = total - i < 4 ? total - i : 4;
    const r0 = rowAt(w, i, 0, count, bytes), r1 = rowAt(w, i, 1, count, bytes);
    const r2 = rowAt(w, i, 2, count, bytes), r3 = rowAt(w, i, 3, count, bytes);
    dots4(r0, r1, r2, r3, v, n, y);
    // Repeated rows of a short block get coefficient 0.
    const c0 = <f32> load<f64>(y);
    const c1 = count > 1 ? <f32> load<f64>(y, 8) : <f32> 0;
    const c2 = count > 2 ? <f32> load<f64>(y, 16) : <f32> 0;
    const c3 = count > 3 ? <f32> load<f64>(y, 24) : <f32> 0;
    const y0 = f32x4.splat(c0), y1 = f32x4.splat(c1), y2 = f32x4.splat(c2), y3 = f32x4.splat(c3);
    for (let o: usize = 0; o < vec; o += 16) {
      let t = f32x4.mul(v128.load(r0 + o), y0);
      t = f32x4.add(t, f32x4.mul(v128.load(r1 + o), y1));
      t = f32x4.add(t, f32x4.mul(v128.load(r2 + o), y2));
      t = f32x4.add(t, f32x4.mul(v128.load(r3 + o), y3));
      v128.store(z + o, f32x4.add(v128.load(z + o), t));
    }
    for (let o = vec; o < bytes; o += 4) {
      let t = load<f32>(r0 + o) * c0 + load<f32>(r1 + o) * c1;
      t += load<f32>(r2 + o) * c2 + load<f32>(r3 + o) * c3;
      store<f32>(z + o, load<f32>(z + o) + t);
    }
  }
}

/**
 * Y = W·Aᵀ: W rows × cols f32, A r × cols f32 (both row-major), Y rows × r f64.
 * y is scratch for 4 f64.
 */
export function rowsTimesTransposed(
  w: usize,
  rows: i32,
  cols: i32,
  a: usize,
  r: i32,
  yOut: usize,
  y: usize,
): void {
  const n = <usize> cols, bytes = n << 2, total = <usize> rows, rank = <usize> r;
  for (let i: usize = 0; i < total; i += 4) {
    const count = total - i < 4 ? total - i : 4;
    const r0 = rowAt(w, i, 0, count, bytes), r1 = rowAt(w, i, 1, count, bytes);
    const r2 = rowAt(w, i, 2, count, bytes), r3 = rowAt(w, i, 3, count, bytes);
    for (let p: usize = 0; p < rank; p++) {
      dots4(r0, r1, r2, r3, a + p * bytes, n, y);
      for (let q: usize = 0; q < count; q++) {
        store<f64>(yOut + (((i + q) * rank + p) << 3), load<f64>(y + (q << 3)));
      }
    }
  }
}
