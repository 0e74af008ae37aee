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

// Normal halves: exponent and mantissa shifted into place, exponent rebiased (15 → 127) by an
// integer add; exponent 31 (inf / NaN) gets all ones. Subnormal halves (and zero) are
// mantissa · 2^-24, converted exactly. No float operation sees a subnormal operand: those take
// a slow microcode path on x86, tens of times slower than the rest of the decode.
const REBIAS: i32 = 112 << 23;
const TWO_M24: f32 = 5.960464477539063e-8; // 2^-24

export function halfToF32(h: u32): f32 {
  const e = h & 0x7fff;
  const sign = (h & 0x8000) << 16;
  if (e < 0x0400) return reinterpret<f32>(reinterpret<u32>(<f32>e * TWO_M24) | sign);
  let bits = (e << 13) + <u32>REBIAS;
  if (e >= 0x7c00) bits |= 0x7f800000;
  return reinterpret<f32>(bits | sign);
}

/** Four halves (one per 32-bit lane, zero-extended) to four f32. */
export function halvesToF32(h: v128): v128 {
  const e = v128.and(h, i32x4.splat(0x7fff));
  let normal = i32x4.add(i32x4.shl(e, 13), i32x4.splat(REBIAS));
  normal = v128.or(normal, v128.and(i32x4.gt_s(e, i32x4.splat(0x7bff)), i32x4.splat(0x7f800000)));
  const subnormal = f32x4.mul(f32x4.convert_i32x4_s(e), f32x4.splat(TWO_M24));
  const f = v128.bitselect(subnormal, normal, i32x4.lt_s(e, i32x4.splat(0x0400)));
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
  const n = <usize>cols, m = <usize>rows, ld = <usize>stride;
  memory.fill(dst, 0, (n * ld) << 3);
  let r: usize = 0;
  if (dtype != F64) {
    const vec = n & ~(<usize>3);
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
