// Cross products P = Xᵀ·Y in df32 over a range of samples, the one kernel
// behind Gram matrices (G_B = BᵀB, G_A = A·Aᵀ), subspace products (Z = W·Aᵀ,
// C = Bᵀ·Z) and factor rebuilds (up = B·S_B, down = S_Aᵀ·A).
//
// X and Y are strided views of packed data: element (sample s, feature f)
// of X lies at element index x.base + s*x.sampleStride + f*x.featureStride.
// One work item is one 16×16 output tile over one sample segment; the host
// lists the items, so one dispatch serves many layers of any shapes.
//
// Every element is cut into exact limbs (df32.wgsl), so every limb product
// is exact, and the products are summed by a three-f32 cascade (acc3_add):
// the result is exact to ~1e-20 relative of the sum of |products|, better
// than a float64 dot product.

override FMT_X: u32 = 0u;
override FMT_Y: u32 = 0u;
// 0: the three cascade terms (the host sums them in f64); 1: one f32;
// 2: a df32 pair (input of a later product, format DF32).
override OUT_MODE: u32 = 0u;

struct View {
  base: u32,
  sample_stride: u32,
  feature_stride: u32,
  features: u32,
}

struct Item {
  x: View,
  y: View,
  // sample range [s0, s1), tile origin (fx0, fy0)
  s0: u32,
  s1: u32,
  fx0: u32,
  fy0: u32,
  // output element index of (fx0, fy0) and the output row stride
  out_base: u32,
  out_stride: u32,
  // always 0 (see opq in df32.wgsl)
  zero: u32,
  pad: u32,
}

@group(0) @binding(0) var<storage, read> items: array<Item>;
@group(0) @binding(1) var<storage, read> xdata: array<u32>;
@group(0) @binding(2) var<storage, read> ydata: array<u32>;
@group(0) @binding(3) var<storage, read_write> outp: array<f32>;

var<workgroup> xs: array<vec4<f32>, 256>;
var<workgroup> ys: array<vec4<f32>, 256>;

fn limbs_x(e: u32) -> vec4<f32> {
  switch FMT_X {
    case FMT_F16: {
      return vec4<f32>(f16_bits_to_f32(half_of(xdata[e >> 1u], e)), 0.0, 0.0, 0.0);
    }
    case FMT_BF16: {
      return vec4<f32>(bf16_bits_to_f32(half_of(xdata[e >> 1u], e)), 0.0, 0.0, 0.0);
    }
    case FMT_F32: {
      return vec4<f32>(split12(bitcast<f32>(xdata[e])), 0.0, 0.0);
    }
    default: {
      return vec4<f32>(split12(bitcast<f32>(xdata[2u * e])), split12(bitcast<f32>(xdata[2u * e + 1u])));
    }
  }
}

fn limbs_y(e: u32) -> vec4<f32> {
  switch FMT_Y {
    case FMT_F16: {
      return vec4<f32>(f16_bits_to_f32(half_of(ydata[e >> 1u], e)), 0.0, 0.0, 0.0);
    }
    case FMT_BF16: {
      return vec4<f32>(bf16_bits_to_f32(half_of(ydata[e >> 1u], e)), 0.0, 0.0, 0.0);
    }
    case FMT_F32: {
      return vec4<f32>(split12(bitcast<f32>(ydata[e])), 0.0, 0.0);
    }
    default: {
      return vec4<f32>(split12(bitcast<f32>(ydata[2u * e])), split12(bitcast<f32>(ydata[2u * e + 1u])));
    }
  }
}

// Which of the 16×16 threads loads which (sample, feature) of a tile: the
// fast thread index walks the operand's smaller stride, so loads coalesce.
fn tile_coords(v: View, t: u32) -> vec2<u32> {
  let a = t & 15u;
  let b = t >> 4u;
  if (v.sample_stride <= v.feature_stride) {
    return vec2<u32>(a, b);
  }
  return vec2<u32>(b, a);
}

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let index = wg.x + wg.y * nwg.x;
  if (index >= arrayLength(&items)) {
    return;
  }
  let it = items[index];
  opaque_zero = it.zero;
  let t = lid.y * 16u + lid.x;
  let cx = tile_coords(it.x, t);
  let cy = tile_coords(it.y, t);
  let lx = limb_count(FMT_X);
  let ly = limb_count(FMT_Y);
  var acc = vec3<f32>(0.0, 0.0, 0.0);
  for (var s = it.s0; s < it.s1; s += 16u) {
    var vx = vec4<f32>(0.0);
    let sx = s + cx.x;
    let fx = it.fx0 + cx.y;
    if (sx < it.s1 && fx < it.x.features) {
      vx = limbs_x(it.x.base + sx * it.x.sample_stride + fx * it.x.feature_stride);
    }
    xs[cx.x * 16u + cx.y] = vx;
    var vy = vec4<f32>(0.0);
    let sy = s + cy.x;
    let fy = it.fy0 + cy.y;
    if (sy < it.s1 && fy < it.y.features) {
      vy = limbs_y(it.y.base + sy * it.y.sample_stride + fy * it.y.feature_stride);
    }
    ys[cy.x * 16u + cy.y] = vy;
    workgroupBarrier();
    for (var k = 0u; k < 16u; k++) {
      let a = xs[k * 16u + lid.y];
      let b = ys[k * 16u + lid.x];
      for (var p = 0u; p < lx; p++) {
        for (var q = 0u; q < ly; q++) {
          acc = acc3_add(acc, a[p] * b[q]);
        }
      }
    }
    workgroupBarrier();
  }
  let i = it.fx0 + lid.y;
  let j = it.fy0 + lid.x;
  if (i < it.x.features && j < it.y.features) {
    let o = it.out_base + lid.y * it.out_stride + lid.x;
    switch OUT_MODE {
      case 0u: {
        outp[3u * o] = acc.x;
        outp[3u * o + 1u] = acc.y;
        outp[3u * o + 2u] = acc.z;
      }
      case 1u: {
        outp[o] = acc.x + opq(acc.y + acc.z);
      }
      default: {
        let d = two_sum(acc.x, opq(acc.y + acc.z));
        outp[2u * o] = d.x;
        outp[2u * o + 1u] = d.y;
      }
    }
  }
}
