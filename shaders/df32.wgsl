// Double-single ("df32") arithmetic and exact element decoding, prepended to
// every resize-lora kernel by the host (WGSL has no #include).
//
// A df32 value is vec2<f32>(hi, lo) with |lo| <= ulp(hi)/2: about 48
// significant bits. Exactness rests on IEEE f32 add/sub/mul rounding to
// nearest, evaluated as written. Shader compilers may rewrite float
// expressions algebraically (Mesa turns (a + b) - a into b unless an op is
// marked precise, which WGSL cannot say), so every intermediate of the
// error-free transforms goes through `opq`: an XOR with a zero that each
// entry point loads from a buffer at run time, which no compiler can see
// through. The host still runs a self-test at start-up and refuses an
// adapter that does not compute these sums exactly.
//
// Products are made exact without relying on a fused multiply-add: every
// factor is cut into "limbs" of at most 12 significant bits (a bit mask, not
// Veltkamp's split), and the product of two 12-bit limbs always fits the
// 24-bit f32 significand, so contracting it into an FMA changes nothing.

// Zero, but unknown to the compiler: every entry point sets it from a buffer.
var<private> opaque_zero: u32;

// x, hidden from algebraic rewriting.
fn opq(x: f32) -> f32 {
  return bitcast<f32>(bitcast<u32>(x) ^ opaque_zero);
}

// Knuth's TwoSum: s + e == a + b exactly.
fn two_sum(a: f32, b: f32) -> vec2<f32> {
  let s = opq(a + b);
  let bb = opq(s - a);
  let e = opq(a - opq(s - bb)) + opq(b - bb);
  return vec2<f32>(s, e);
}

// Dekker's FastTwoSum; needs |a| >= |b| (or a == 0).
fn fast_two_sum(a: f32, b: f32) -> vec2<f32> {
  let s = opq(a + b);
  return vec2<f32>(s, b - opq(s - a));
}

// df32 + f32.
fn df_add_f(acc: vec2<f32>, x: f32) -> vec2<f32> {
  let s = two_sum(acc.x, x);
  return fast_two_sum(s.x, opq(s.y + acc.y));
}

// df32 + df32 (the accurate variant: both parts through TwoSum).
fn df_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let s = two_sum(a.x, b.x);
  let t = two_sum(a.y, b.y);
  let u = fast_two_sum(s.x, opq(s.y + t.x));
  return fast_two_sum(u.x, opq(u.y + t.y));
}

// Cascaded sum of exact terms in three f32: s0 + s1 collect every term and
// rounding error exactly (TwoSum twice); only s2, the errors of s1 (about
// 2^-48 of the sum), is rounded, so n terms lose ~n·2^-72 of their sum.
fn acc3_add(acc: vec3<f32>, x: f32) -> vec3<f32> {
  let a = two_sum(acc.x, x);
  let b = two_sum(acc.y, a.y);
  return vec3<f32>(a.x, b.x, opq(acc.z + b.y));
}

// x == hi + lo exactly, each with at most 12 significant bits.
fn split12(x: f32) -> vec2<f32> {
  let hi = bitcast<f32>(bitcast<u32>(x) & (0xfffff000u ^ opaque_zero));
  return vec2<f32>(hi, opq(x - hi));
}

// IEEE binary16 bits -> f32, exact for subnormals whatever the driver's
// denormal mode (an f16 subnormal is a normal f32).
fn f16_bits_to_f32(h: u32) -> f32 {
  let sign = select(1.0, -1.0, (h & 0x8000u) != 0u);
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    return sign * f32(m) * 5.9604644775390625e-8; // m * 2^-24
  }
  if (e == 31u) {
    return bitcast<f32>(((h & 0x8000u) << 16u) | 0x7f800000u | (m << 13u));
  }
  return bitcast<f32>(((h & 0x8000u) << 16u) | ((e + 112u) << 23u) | (m << 13u));
}

// Element formats of packed u32 data.
const FMT_F16: u32 = 0u;
const FMT_BF16: u32 = 1u;
const FMT_F32: u32 = 2u;
const FMT_DF32: u32 = 3u; // (hi, lo) f32 pairs, made on the host from F64

// Limbs of an element: F16/BF16 values have <= 11 significant bits (one
// limb), F32 two, DF32 four.
fn limb_count(fmt: u32) -> u32 {
  return select(select(4u, 2u, fmt == FMT_F32), 1u, fmt < FMT_F32);
}

// A 16-bit element `e` of words `w` (little-endian halves).
fn half_of(w: u32, e: u32) -> u32 {
  return select(w & 0xffffu, w >> 16u, (e & 1u) == 1u);
}

fn bf16_bits_to_f32(h: u32) -> f32 {
  return bitcast<f32>(h << 16u);
}
