// f32 to F16 / BF16 little-endian bytes, rounding to nearest, ties to even, exactly as
// `encodeFloats` (../../../safetensors/dtype.ts) does in JavaScript: overflow goes to ±inf, a NaN
// keeps its sign and becomes the quiet NaN 0x7e00 (F16) or its top half with the quiet bit set
// (BF16). Eight values per step; no float operation sees a subnormal operand (see decode.ts).
// The v128 constants are loads from static data: V8 rebuilds a v128.const at each use, which in
// these short loops costs as much as the work, while a load is one cheap memory operand.

const HALF_MIN_NORMAL: i32 = 0x38800000; // 2^-14
const HALF_MAX_BELOW_INF: i32 = 0x477fefff; // the largest f32 that rounds to a finite half
const F32_INF: i32 = 0x7f800000;
const REBIAS: i32 = (112 << 23) - 0xfff; // exponent 127 → 15, plus the rounding bias

/** The constants of halves4, one per v128 (see BF16_CONSTANTS). */
const F16_CONSTANTS = memory.data<i32>([
  0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
  1, 1, 1, 1,
  REBIAS, REBIAS, REBIAS, REBIAS,
  0x007fffff, 0x007fffff, 0x007fffff, 0x007fffff,
  0x3f000000, 0x3f000000, 0x3f000000, 0x3f000000, // 0.5f
  HALF_MIN_NORMAL, HALF_MIN_NORMAL, HALF_MIN_NORMAL, HALF_MIN_NORMAL,
  0x7c00, 0x7c00, 0x7c00, 0x7c00,
  HALF_MAX_BELOW_INF, HALF_MAX_BELOW_INF, HALF_MAX_BELOW_INF, HALF_MAX_BELOW_INF,
  0x7e00, 0x7e00, 0x7e00, 0x7e00,
  F32_INF, F32_INF, F32_INF, F32_INF,
]);

/** Four f32 (bits in 32-bit lanes) to four halves in the low 16 bits of each lane. */
@inline function halves4(x: v128, c: usize): v128 {
  const abs = v128.and(x, v128.load(c));
  const sign = i32x4.shr_u(v128.xor(x, abs), 16);
  // Normal halves: drop 13 mantissa bits with rounding (a carry rounds up the exponent, to inf
  // past the largest half).
  const odd = v128.and(i32x4.shr_u(abs, 13), v128.load(c, 16));
  const normal = i32x4.shr_u(i32x4.add(i32x4.sub(abs, v128.load(c, 32)), odd), 13);
  // Subnormal halves: adding 0.5 rounds |x| to a multiple of 2^-24 in the float adder; f32
  // subnormals (all of which round to zero) are zeroed first.
  const half = v128.load(c, 64);
  const normalF32 = v128.and(abs, i32x4.gt_s(abs, v128.load(c, 48)));
  const small = i32x4.sub(f32x4.add(normalF32, half), half);
  let h = v128.bitselect(small, normal, i32x4.lt_s(abs, v128.load(c, 80)));
  h = v128.bitselect(v128.load(c, 96), h, i32x4.gt_s(abs, v128.load(c, 112)));
  h = v128.bitselect(v128.load(c, 128), h, i32x4.gt_s(abs, v128.load(c, 144)));
  return v128.or(h, sign);
}

/** The constants of bfloats4, one per v128 (loaded once per call). */
const BF16_CONSTANTS = memory.data<i32>([
  1, 1, 1, 1,
  0x7fff, 0x7fff, 0x7fff, 0x7fff,
  0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
  F32_INF, F32_INF, F32_INF, F32_INF,
  0x40, 0x40, 0x40, 0x40,
]);

/** Four f32 (bits in 32-bit lanes) to four BF16 in the low 16 bits of each lane. */
@inline function bfloats4(x: v128, one: v128, half: v128, absMask: v128, inf: v128, quiet: v128): v128 {
  const top = i32x4.shr_u(x, 16);
  const bias = i32x4.add(v128.and(top, one), half);
  const rounded = i32x4.shr_u(i32x4.add(x, bias), 16);
  const nan = i32x4.gt_s(v128.and(x, absMask), inf);
  return v128.bitselect(v128.or(top, quiet), rounded, nan);
}

/** n f32 at src to n F16 at dst. */
export function encodeF16(src: usize, dst: usize, n: i32): void {
  const c = F16_CONSTANTS;
  const count = <usize> n, vec = count & ~(<usize> 7);
  let i: usize = 0;
  for (; i < vec; i += 8) {
    const lo = halves4(v128.load(src + (i << 2)), c), hi = halves4(v128.load(src + (i << 2), 16), c);
    v128.store(dst + (i << 1), i16x8.narrow_i32x4_u(lo, hi));
  }
  for (; i < count; i++) {
    const h = halves4(i32x4.splat(load<i32>(src + (i << 2))), c);
    store<u16>(dst + (i << 1), <u16> i32x4.extract_lane(h, 0));
  }
}

/** n f32 at src to n BF16 at dst. */
export function encodeBF16(src: usize, dst: usize, n: i32): void {
  const c = BF16_CONSTANTS;
  const one = v128.load(c), half = v128.load(c, 16), absMask = v128.load(c, 32);
  const inf = v128.load(c, 48), quiet = v128.load(c, 64);
  const count = <usize> n, vec = count & ~(<usize> 7);
  let i: usize = 0;
  for (; i < vec; i += 8) {
    const lo = bfloats4(v128.load(src + (i << 2)), one, half, absMask, inf, quiet);
    const hi = bfloats4(v128.load(src + (i << 2), 16), one, half, absMask, inf, quiet);
    v128.store(dst + (i << 1), i16x8.narrow_i32x4_u(lo, hi));
  }
  for (; i < count; i++) {
    const x = i32x4.splat(load<i32>(src + (i << 2)));
    const h = bfloats4(x, one, half, absMask, inf, quiet);
    store<u16>(dst + (i << 1), <u16> i32x4.extract_lane(h, 0));
  }
}
