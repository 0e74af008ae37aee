// Float decoding: F16 / BF16 / F32 / F64 little-endian bytes to f32 or f64.
// Every F16, BF16 and F32 value is exact in f32 and f64; F64 → f32 rounds to nearest even.

/** dtype codes shared with kernels.ts. */
export const F16: i32 = 0;
export const BF16: i32 = 1;
export const F32: i32 = 2;
export const F64: i32 = 3;

/** Bytes per element of a dtype code. */
export function dtypeSize(dtype: i32): usize {
  return dtype == F64 ? 8 : dtype == F32 ? 4 : 2;
}

// A half's exponent and mantissa shifted into an f32 and multiplied by 2^112 rebias the
// exponent (15 → 127) and turn subnormal halves into the right normal floats; exponent 31
// (inf / NaN) comes out as 2^16·1.m and gets its exponent forced to all ones.
const HALF_REBIAS: f32 = 5.192296858534828e33; // 2^112

export function halfToF32(h: u32): f32 {
  const e = h & 0x7fff;
  let bits = reinterpret<u32>(reinterpret<f32>(e << 13) * HALF_REBIAS);
  if (e >= 0x7c00) bits |= 0x7f800000;
  return reinterpret<f32>(bits | ((h & 0x8000) << 16));
}

/** Four halves (one per 32-bit lane, zero-extended) to four f32. */
export function halvesToF32(h: v128): v128 {
  const e = v128.and(h, i32x4.splat(0x7fff));
  let f = f32x4.mul(i32x4.shl(e, 13), f32x4.splat(HALF_REBIAS));
  const special = i32x4.gt_s(e, i32x4.splat(0x7bff));
  f = v128.or(f, v128.and(special, i32x4.splat(0x7f800000)));
  return v128.or(f, i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

export function loadF32(src: usize, i: usize, dtype: i32): f32 {
  if (dtype == F16) return halfToF32(<u32>load<u16>(src + (i << 1)));
  if (dtype == BF16) return reinterpret<f32>(<u32>load<u16>(src + (i << 1)) << 16);
  if (dtype == F32) return load<f32>(src + (i << 2));
  return <f32>load<f64>(src + (i << 3));
}

export function loadF64(src: usize, i: usize, dtype: i32): f64 {
  if (dtype == F64) return load<f64>(src + (i << 3));
  return <f64>loadF32(src, i, dtype);
}

/** Decodes n values to f32 at dst (no padding). */
export function decodeF32(src: usize, dst: usize, n: i32, dtype: i32): void {
  const count = <usize>n;
  let i: usize = 0;
  const vec = count & ~(<usize>3);
  if (dtype == F16) {
    for (; i < vec; i += 4) {
      v128.store(dst + (i << 2), halvesToF32(v128.load_ext<u16>(src + (i << 1))));
    }
  } else if (dtype == BF16) {
    for (; i < vec; i += 4) {
      v128.store(dst + (i << 2), i32x4.shl(v128.load_ext<u16>(src + (i << 1)), 16));
    }
  } else if (dtype == F32) {
    memory.copy(dst, src, count << 2);
    return;
  } else {
    for (; i < vec; i += 4) {
      const lo = f32x4.demote_f64x2_zero(v128.load(src + (i << 3)));
      const hi = f32x4.demote_f64x2_zero(v128.load(src + (i << 3), 16));
      v128.store(dst + (i << 2), i32x4.shuffle(lo, hi, 0, 1, 4, 5));
    }
  }
  for (; i < count; i++) store<f32>(dst + (i << 2), loadF32(src, i, dtype));
}

/** Decodes n values to f64 at dst (no padding). */
export function decodeF64(src: usize, dst: usize, n: i32, dtype: i32): void {
  const count = <usize>n;
  if (dtype == F64) {
    memory.copy(dst, src, count << 3);
    return;
  }
  let i: usize = 0;
  const vec = count & ~(<usize>3);
  if (dtype == F16) {
    for (; i < vec; i += 4) {
      const f = halvesToF32(v128.load_ext<u16>(src + (i << 1)));
      v128.store(dst + (i << 3), f64x2.promote_low_f32x4(f));
      v128.store(dst + (i << 3), f64x2.promote_low_f32x4(i32x4.shuffle(f, f, 2, 3, 2, 3)), 16);
    }
  } else if (dtype == BF16) {
    for (; i < vec; i += 4) {
      const f = i32x4.shl(v128.load_ext<u16>(src + (i << 1)), 16);
      v128.store(dst + (i << 3), f64x2.promote_low_f32x4(f));
      v128.store(dst + (i << 3), f64x2.promote_low_f32x4(i32x4.shuffle(f, f, 2, 3, 2, 3)), 16);
    }
  } else {
    for (; i < vec; i += 2) {
      v128.store(dst + (i << 3), f64x2.promote_low_f32x4(v128.load_zero<u64>(src + (i << 2))));
    }
  }
  for (; i < count; i++) store<f64>(dst + (i << 3), loadF64(src, i, dtype));
}

/** Decodes a rows × cols matrix to f32 rows of `stride` values, zeroing the padding. */
export function decodeRowsF32(
  src: usize,
  dst: usize,
  rows: i32,
  cols: i32,
  stride: i32,
  dtype: i32,
): void {
  const rowBytes = <usize>cols * dtypeSize(dtype);
  for (let r = 0; r < rows; r++) {
    const out = dst + (<usize>r * <usize>stride << 2);
    decodeF32(src + <usize>r * rowBytes, out, cols, dtype);
    memory.fill(out + (<usize>cols << 2), 0, <usize>(stride - cols) << 2);
  }
}

/** Decodes a rows × cols matrix to f64 rows of `stride` values, zeroing the padding. */
export function decodeRowsF64(
  src: usize,
  dst: usize,
  rows: i32,
  cols: i32,
  stride: i32,
  dtype: i32,
): void {
  const rowBytes = <usize>cols * dtypeSize(dtype);
  for (let r = 0; r < rows; r++) {
    const out = dst + (<usize>r * <usize>stride << 3);
    decodeF64(src + <usize>r * rowBytes, out, cols, dtype);
    memory.fill(out + (<usize>cols << 3), 0, <usize>(stride - cols) << 3);
  }
}

/**
 * Decodes a rows × cols matrix transposed: dst is cols × stride f64 (stride ≥ rows),
 * dst[c·stride + r] = src[r·cols + c], padding zeroed.
 */
export function decodeTransposedF64(
  src: usize,
  dst: usize,
  rows: i32,
  cols: i32,
  stride: i32,
  dtype: i32,
): void {
  memory.fill(dst, 0, (<usize>cols * <usize>stride) << 3);
  const n = <usize>cols;
  for (let r: usize = 0; r < <usize>rows; r++) {
    for (let c: usize = 0; c < n; c++) {
      store<f64>(dst + ((c * <usize>stride + r) << 3), loadF64(src, r * n + c, dtype));
    }
  }
}
