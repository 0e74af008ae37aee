// Passes over base weights, read raw (F16 / BF16 / F32 / F64) into memory: the sum of squares
// (Frobenius norm), the product WᵀW·v (spectral norm by Lanczos), and W·Aᵀ (subspace scales).

import { BF16, decodeF32, dtypeSize, F16, F32, halvesToF32 } from "./decode";

/** Values of a row block whose f32 partial sums are moved to f64 (bounds f32 rounding). */
const FLUSH: usize = 1024;

/** Sum of squares of n values, exact products accumulated in f64. */
export function sumSquares(src: usize, n: f64, dtype: i32): f64 {
  const count = <usize>n;
  let acc0 = f64x2.splat(0), acc1 = f64x2.splat(0);
  let i: usize = 0;
  const vec = count & ~(<usize>3);
  if (dtype == F16 || dtype == BF16) {
    // F16 squares are exact in f32 (22 significant bits, exponents in range); BF16 ones may
    // leave the f32 range, so they are squared in f64.
    for (; i < vec; i += 4) {
      const h = v128.load_ext<u16>(src + (i << 1));
      const f = dtype == F16 ? halvesToF32(h) : i32x4.shl(h, 16);
      if (dtype == F16) {
        const q = f32x4.mul(f, f);
        acc0 = f64x2.add(acc0, f64x2.promote_low_f32x4(q));
        acc1 = f64x2.add(acc1, f64x2.promote_low_f32x4(i32x4.shuffle(q, q, 2, 3, 2, 3)));
      } else {
        const lo = f64x2.promote_low_f32x4(f);
        const hi = f64x2.promote_low_f32x4(i32x4.shuffle(f, f, 2, 3, 2, 3));
        acc0 = f64x2.add(acc0, f64x2.mul(lo, lo));
        acc1 = f64x2.add(acc1, f64x2.mul(hi, hi));
      }
    }
  } else if (dtype == F32) {
    for (; i < vec; i += 4) {
      const lo = f64x2.promote_low_f32x4(v128.load_zero<u64>(src + (i << 2)));
      const hi = f64x2.promote_low_f32x4(v128.load_zero<u64>(src + (i << 2), 8));
      acc0 = f64x2.add(acc0, f64x2.mul(lo, lo));
      acc1 = f64x2.add(acc1, f64x2.mul(hi, hi));
    }
  } else {
    for (; i < vec; i += 4) {
      const lo = v128.load(src + (i << 3)), hi = v128.load(src + (i << 3), 16);
      acc0 = f64x2.add(acc0, f64x2.mul(lo, lo));
      acc1 = f64x2.add(acc1, f64x2.mul(hi, hi));
    }
  }
  const acc = f64x2.add(acc0, acc1);
  let sum = f64x2.extract_lane(acc, 0) + f64x2.extract_lane(acc, 1);
  for (; i < count; i++) {
    const x = loadAny(src, i, dtype);
    sum += x * x;
  }
  return sum;
}

function loadAny(src: usize, i: usize, dtype: i32): f64 {
  if (dtype == F16) {
    return <f64>f32x4.extract_lane(halvesToF32(i32x4.splat(<i32>load<u16>(src + (i << 1)))), 0);
  }
  if (dtype == BF16) return <f64>reinterpret<f32>(<u32>load<u16>(src + (i << 1)) << 16);
  if (dtype == F32) return <f64>load<f32>(src + (i << 2));
  return load<f64>(src + (i << 3));
}

/** Dot products of four f32 rows with v over `stride` values (multiple of 4), into y[0..3]. */
function dot4(s: usize, stride: usize, v: usize, y: usize): void {
  const bytes = stride << 2;
  let t0 = f64x2.splat(0), t1 = f64x2.splat(0), t2 = f64x2.splat(0), t3 = f64x2.splat(0);
  for (let b0: usize = 0; b0 < bytes; b0 += FLUSH << 2) {
    const b1 = b0 + (FLUSH << 2) < bytes ? b0 + (FLUSH << 2) : bytes;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    for (let o = b0; o < b1; o += 16) {
      const x = v128.load(v + o);
      a0 = f32x4.add(a0, f32x4.mul(v128.load(s + o), x));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(s + bytes + o), x));
      a2 = f32x4.add(a2, f32x4.mul(v128.load(s + 2 * bytes + o), x));
      a3 = f32x4.add(a3, f32x4.mul(v128.load(s + 3 * bytes + o), x));
    }
    t0 = f64x2.add(t0, widenPairs(a0));
    t1 = f64x2.add(t1, widenPairs(a1));
    t2 = f64x2.add(t2, widenPairs(a2));
    t3 = f64x2.add(t3, widenPairs(a3));
  }
  store<f64>(y, f64x2.extract_lane(t0, 0) + f64x2.extract_lane(t0, 1));
  store<f64>(y, f64x2.extract_lane(t1, 0) + f64x2.extract_lane(t1, 1), 8);
  store<f64>(y, f64x2.extract_lane(t2, 0) + f64x2.extract_lane(t2, 1), 16);
  store<f64>(y, f64x2.extract_lane(t3, 0) + f64x2.extract_lane(t3, 1), 24);
}

/** (lane0 + lane2, lane1 + lane3) of an f32x4, in f64. */
function widenPairs(a: v128): v128 {
  return f64x2.add(f64x2.promote_low_f32x4(a), f64x2.promote_low_f32x4(i32x4.shuffle(a, a, 2, 3, 2, 3)));
}

/** Decodes `count` rows of W starting at row `row` into f32 scratch rows of `stride`. */
function decodeBlock(
  w: usize,
  row: usize,
  count: usize,
  cols: i32,
  dtype: i32,
  scratch: usize,
  stride: usize,
): void {
  const rowBytes = <usize>cols * dtypeSize(dtype);
  for (let q: usize = 0; q < count; q++) {
    decodeF32(w + (row + q) * rowBytes, scratch + ((q * stride) << 2), cols, dtype);
  }
}

/**
 * z = WᵀW·v in one pass over W (rows × cols, raw dtype): per row wᵢ, yᵢ = wᵢ·v and
 * z += yᵢ·wᵢ, four rows at a time. v and z are f32 with `stride` = cols rounded up to 4
 * (v's padding must be zero); scratch holds 4·stride f32 + 4 f64.
 */
export function gramMatvec(
  w: usize,
  rows: i32,
  cols: i32,
  dtype: i32,
  v: usize,
  z: usize,
  scratch: usize,
): void {
  const stride = (<usize>cols + 3) & ~(<usize>3);
  const bytes = stride << 2;
  const y = scratch + 4 * bytes;
  memory.fill(z, 0, bytes);
  memory.fill(scratch, 0, 4 * bytes);
  const total = <usize>rows;
  for (let i: usize = 0; i < total; i += 4) {
    const count = total - i < 4 ? total - i : 4;
    if (count < 4) memory.fill(scratch, 0, 4 * bytes); // unused rows contribute zero
    decodeBlock(w, i, count, cols, dtype, scratch, stride);
    dot4(scratch, stride, v, y);
    const y0 = f32x4.splat(<f32>load<f64>(y)), y1 = f32x4.splat(<f32>load<f64>(y, 8));
    const y2 = f32x4.splat(<f32>load<f64>(y, 16)), y3 = f32x4.splat(<f32>load<f64>(y, 24));
    for (let o: usize = 0; o < bytes; o += 16) {
      let t = f32x4.mul(v128.load(scratch + o), y0);
      t = f32x4.add(t, f32x4.mul(v128.load(scratch + bytes + o), y1));
      t = f32x4.add(t, f32x4.mul(v128.load(scratch + 2 * bytes + o), y2));
      t = f32x4.add(t, f32x4.mul(v128.load(scratch + 3 * bytes + o), y3));
      v128.store(z + o, f32x4.add(v128.load(z + o), t));
    }
  }
}

/**
 * Y = W·Aᵀ: W rows × cols (raw dtype), A r × stride f32 (stride = cols rounded up to 4, padding
 * zero), Y rows × r f64. Scratch holds 4·stride f32 + 4 f64.
 */
export function rowsTimesTransposed(
  w: usize,
  rows: i32,
  cols: i32,
  dtype: i32,
  a: usize,
  r: i32,
  yOut: usize,
  scratch: usize,
): void {
  const stride = (<usize>cols + 3) & ~(<usize>3);
  const bytes = stride << 2;
  const y = scratch + 4 * bytes;
  const rank = <usize>r;
  memory.fill(scratch, 0, 4 * bytes);
  const total = <usize>rows;
  for (let i: usize = 0; i < total; i += 4) {
    const count = total - i < 4 ? total - i : 4;
    if (count < 4) memory.fill(scratch, 0, 4 * bytes);
    decodeBlock(w, i, count, cols, dtype, scratch, stride);
    for (let p: usize = 0; p < rank; p++) {
      dot4(scratch, stride, a + p * bytes, y);
      for (let q: usize = 0; q < count; q++) {
        store<f64>(yOut + (((i + q) * rank + p) << 3), load<f64>(y + (q << 3)));
      }
    }
  }
}
