// Float decoding: F16 / BF16 / F32 / F64 little-endian bytes to f32 or f64, and the 8-bit floats
// of base checkpoints (F8_E4M3, F8_E5M2; only through decodeF32, loadF32 and sumSquares).
// Every F16, BF16, F32 and 8-bit value is exact in f32 and f64; F64 → f32 rounds to nearest even.

/** dtype codes shared with kernels.ts. */
export const F16: i32 = 0;
export const BF16: i32 = 1;
export const F32: i32 = 2;
export const F64: i32 = 3;
export const F8_E4M3: i32 = 4;
export const F8_E5M2: i32 = 5;

/** Bytes per element of a dtype code. */
export function dtypeSize(dtype: i32): usize {
  return dtype == F64 ? 8 : dtype == F32 ? 4 : dtype >= F8_E4M3 ? 1 : 2;
}

/**
 * One F8_E4M3 ("fn": bias 7, no infinities, NaN at S.1111.111) to f32: a normal value's exponent
 * and mantissa shifted into place and rebiased (7 → 127); a subnormal is mantissa · 2^-9.
 */
export function e4m3ToF32(b: u32): f32 {
  const sign = (b & 0x80) << 24, e = (b >> 3) & 0xf, m = b & 7;
  if (e == 0) return reinterpret<f32>(reinterpret<u32>(<f32> m * 0.001953125) | sign);
  if (e == 0xf && m == 7) return reinterpret<f32>(0x7fc00000 | sign);
  return reinterpret<f32>(sign | ((e + 120) << 23) | (m << 20));
}

/** One F8_E5M2 to f32: it is the top byte of a half. */
@inline export function e5m2ToF32(b: u32): f32 {
  return halfToF32(b << 8);
}

// Halves to f32 with integer operations: exponent and mantissa shifted into place and the
// exponent rebiased (15 → 127) by an add. That is exact for normal halves; the rare lanes —
// zero, subnormal (mantissa · 2^-24, converted exactly), inf and NaN (exponent all ones) — are
// fixed on a branch taken only when a group of values contains one. No float operation sees a
// subnormal operand: x86 handles those in microcode, tens of times slower than the rest.
const REBIAS: i32 = 112 << 23;
const TWO_M24: f32 = 5.960464477539063e-8; // 2^-24

/** One half (bits in the low 16) to f32. */
export function halfToF32(h: u32): f32 {
  const e = h & 0x7fff;
  const sign = (h & 0x8000) << 16;
  if (e < 0x0400) return reinterpret<f32>(reinterpret<u32>(<f32> e * TWO_M24) | sign);
  let bits = (e << 13) + <u32> REBIAS;
  if (e >= 0x7c00) bits |= 0x7f800000;
  return reinterpret<f32>(bits | sign);
}

/** |x| as f32 for four half magnitudes (zero-extended to 32-bit lanes). */
export function halfMagnitudes(e: v128, rare: bool): v128 {
  let f = i32x4.add(i32x4.shl(e, 13), i32x4.splat(REBIAS));
  if (rare) {
    f = v128.or(f, v128.and(i32x4.gt_s(e, i32x4.splat(0x7bff)), i32x4.splat(0x7f800000)));
    const small = f32x4.mul(f32x4.convert_i32x4_s(e), f32x4.splat(TWO_M24));
    f = v128.bitselect(small, f, i32x4.lt_s(e, i32x4.splat(0x0400)));
  }
  return f;
}

/** Four halves (one per 32-bit lane, zero-extended) to four f32. */
export function halvesToF32(h: v128): v128 {
  const e = v128.and(h, i32x4.splat(0x7fff));
  const rare = v128.any_true(i32x4.ge_u(i32x4.sub(e, i32x4.splat(0x0400)), i32x4.splat(0x7800)));
  return v128.or(halfMagnitudes(e, rare), i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

/**
 * The constants of rareHalves and magnitudes, one per v128. Kernels load them once, outside their
 * loops (see the note in encode.ts: a v128 constant inside a loop costs V8 a rebuild per use).
 */
export const HALF_CONSTANTS = memory.data<i32>([
  0x7fff7fff, 0x7fff7fff, 0x7fff7fff, 0x7fff7fff, // magnitude bits of eight halves
  0x04000400, 0x04000400, 0x04000400, 0x04000400, // smallest normal magnitude
  0x78007800, 0x78007800, 0x78007800, 0x78007800, // count of normal magnitudes
  REBIAS, REBIAS, REBIAS, REBIAS,
]);

/** Whether any of eight half magnitudes is zero, subnormal, inf or NaN. */
@inline export function rareHalves(a: v128, minNormal: v128, normals: v128): bool {
  return v128.any_true(i16x8.ge_u(i16x8.sub(a, minNormal), normals));
}

/** |x| as f32 for four half magnitudes (zero-extended); lanes that may be rare fixed if `rare`. */
@inline export function magnitudes(e: v128, rare: bool, rebias: v128): v128 {
  if (rare) return halfMagnitudes(e, true);
  return i32x4.add(i32x4.shl(e, 13), rebias);
}

/** n halves (n a multiple of 8) at src to T (f32, or f64 through f32) at dst. */
function decodeHalves<T>(src: usize, dst: usize, n: usize): void {
  const c = HALF_CONSTANTS;
  const mask = v128.load(c), minNormal = v128.load(c, 16), normals = v128.load(c, 32);
  const rebias = v128.load(c, 48), zero = i16x8.splat(0);
  for (let i: usize = 0; i < n; i += 8) {
    const v = v128.load(src + (i << 1));
    const a = v128.and(v, mask), s = v128.andnot(v, mask);
    const rare = rareHalves(a, minNormal, normals);
    // Interleaving zeros below the sign halves puts each sign on bit 31 of its lane.
    const lo = v128.or(
      magnitudes(i32x4.extend_low_i16x8_u(a), rare, rebias),
      i16x8.shuffle(zero, s, 0, 8, 1, 9, 2, 10, 3, 11),
    );
    const hi = v128.or(
      magnitudes(i32x4.extend_high_i16x8_u(a), rare, rebias),
      i16x8.shuffle(zero, s, 4, 12, 5, 13, 6, 14, 7, 15),
    );
    const d = dst + i * sizeof<T>();
    if (sizeof<T>() == 8) {
      storePromoted(d, lo);
      storePromoted(d + 32, hi);
    } else {
      v128.store(d, lo);
      v128.store(d, hi, 16);
    }
  }
}

/** Four f32 to four f64 at dst. */
@inline function storePromoted(dst: usize, v: v128): void {
  v128.store(dst, f64x2.promote_low_f32x4(v));
  v128.store(dst, f64x2.promote_low_f32x4(i32x4.shuffle(v, v, 2, 3, 2, 3)), 16);
}

export function loadF32(src: usize, i: usize, dtype: i32): f32 {
  if (dtype == F16) return halfToF32(<u32> load<u16>(src + (i << 1)));
  if (dtype == F8_E4M3) return e4m3ToF32(<u32> load<u8>(src + i));
  if (dtype == F8_E5M2) return e5m2ToF32(<u32> load<u8>(src + i));
  if (dtype == BF16) return reinterpret<f32>(<u32> load<u16>(src + (i << 1)) << 16);
  if (dtype == F32) return load<f32>(src + (i << 2));
  return <f32> load<f64>(src + (i << 3));
}

export function loadF64(src: usize, i: usize, dtype: i32): f64 {
  if (dtype == F64) return load<f64>(src + (i << 3));
  return <f64> loadF32(src, i, dtype);
}

/**
 * Decodes n values of a 2- or 4-byte dtype code to f64 at dst (no padding): as decodeF32 then a
 * widening, every value exact, without the f32 pass through memory.
 */
export function decodeRowF64(src: usize, dst: usize, n: usize, dtype: i32): void {
  let i: usize = 0;
  if (dtype == F16) {
    i = n & ~(<usize> 7);
    decodeHalves<f64>(src, dst, i);
  } else {
    const vec = n & ~(<usize> 3);
    for (; i < vec; i += 4) storePromoted(dst + (i << 3), load4(src, i, dtype));
  }
  for (; i < n; i++) store<f64>(dst + (i << 3), <f64> loadF32(src, i, dtype));
}

/** Decodes n values to f32 at dst (no padding). */
export function decodeF32(src: usize, dst: usize, n: f64, dtype: i32): void {
  const count = <usize> n;
  let i: usize = 0;
  if (dtype == F16) {
    i = count & ~(<usize> 7);
    decodeHalves<f32>(src, dst, i);
  } else if (dtype == BF16) {
    const vec = count & ~(<usize> 3);
    for (; i < vec; i += 4) {
      v128.store(dst + (i << 2), i32x4.shl(v128.load_ext<u16>(src + (i << 1)), 16));
    }
  } else if (dtype == F32) {
    memory.copy(dst, src, count << 2);
    return;
  } else if (dtype == F64) {
    const vec = count & ~(<usize> 3);
    for (; i < vec; i += 4) {
      const lo = f32x4.demote_f64x2_zero(v128.load(src + (i << 3)));
      const hi = f32x4.demote_f64x2_zero(v128.load(src + (i << 3), 16));
      v128.store(dst + (i << 2), i32x4.shuffle(lo, hi, 0, 1, 4, 5));
    }
  }
  for (; i < count; i++) store<f32>(dst + (i << 2), loadF32(src, i, dtype));
}

/** Four values at element index i of a 2- or 4-byte dtype, as f32x4. */
function load4(src: usize, i: usize, dtype: i32): v128 {
  if (dtype == F16) return halvesToF32(v128.load_ext<u16>(src + (i << 1)));
  if (dtype == BF16) return i32x4.shl(v128.load_ext<u16>(src + (i << 1)), 16);
  return v128.load(src + (i << 2));
}

/**
 * Decodes a rows × cols matrix transposed: dst is cols × stride f64 (stride ≥ rows, even),
 * dst[c·stride + r] = src[r·cols + c], padding zeroed. Two source rows at a time give one
 * f64x2 store per column.
 */
export function decodeTransposedF64(
  src: usize,
  dst: usize,
  rows: i32,
  cols: i32,
  stride: i32,
  dtype: i32,
): void {
  const n = <usize> cols, m = <usize> rows, ld = <usize> stride;
  for (let c: usize = 0; c < n; c++) {
    for (let r = m; r < ld; r++) store<f64>(dst + ((c * ld + r) << 3), 0);
  }
  let r: usize = 0;
  if (dtype != F64) {
    const vec = n & ~(<usize> 3);
    for (; r + 2 <= m; r += 2) {
      let c: usize = 0;
      for (; c < vec; c += 4) {
        const a = load4(src, r * n + c, dtype), b = load4(src, (r + 1) * n + c, dtype);
        const lo = i32x4.shuffle(a, b, 0, 4, 1, 5), hi = i32x4.shuffle(a, b, 2, 6, 3, 7);
        const d = dst + ((c * ld + r) << 3);
        v128.store(d, f64x2.promote_low_f32x4(lo));
        v128.store(d + (ld << 3), f64x2.promote_low_f32x4(i32x4.shuffle(lo, lo, 2, 3, 2, 3)));
        v128.store(d + (ld << 4), f64x2.promote_low_f32x4(hi));
        v128.store(d + ((ld << 3) * 3), f64x2.promote_low_f32x4(i32x4.shuffle(hi, hi, 2, 3, 2, 3)));
      }
      for (; c < n; c++) {
        store<f64>(dst + ((c * ld + r) << 3), loadF64(src, r * n + c, dtype));
        store<f64>(dst + ((c * ld + r + 1) << 3), loadF64(src, (r + 1) * n + c, dtype));
      }
    }
  }
  for (; r < m; r++) {
    for (let c: usize = 0; c < n; c++) {
      store<f64>(dst + ((c * ld + r) << 3), loadF64(src, r * n + c, dtype));
    }
  }
}
