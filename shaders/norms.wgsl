// Base-weight norms for many weights at once: exact Frobenius norms (df32
// row sums) and the spectral norm by Lanczos iteration on WᵀW, each step
// being `row_pass` (u = W·v), `col_pass` (partial Wᵀ·u per row piece) and
// `lanczos` (α, β, next v), all on the GPU: the host reads the tridiagonal
// coefficients back only to test convergence.
//
// A weight is cut into row pieces of at most a few MiB, each stored whole
// in one of four data slots (separate buffers, each within the adapter's
// maxStorageBufferBindingSize), so a weight may be larger than one binding.
//
// `desc` (u32, the batch descriptor) starts with a 16-word header: offsets of
// the sections below (pieces, weights, row jobs, col jobs, active weights),
// the weight, row-job, col-job and active-weight counts, and a zero (see opq
// in df32.wgsl). Sections:
//   pieces:   slot, word_base, fmt, cols, rows, row_offset, weight, 0
//   weights:  cols, rows, v_base, u_base, first_piece, piece_count, partial_base, hist_base
//   row jobs: piece, first row (ROWS_PER_JOB rows each)
//   col jobs: piece, first column (256 columns each)
//   active:   indices of the weights still iterating
// The host rewrites the job and active lists between submits so that only
// weights that have not converged are dispatched.
// `vecs` (f32) per weight: v and v_prev (cols each) at v_base, u (rows) at
// u_base, and one partial Wᵀ·u (cols) per piece from partial_base.
// `hist` (f32) per weight at hist_base: step count, α[MAX_STEPS], β[MAX_STEPS].

override MAX_STEPS: u32 = 128u;
override WITH_FRO: bool = false;

const ROWS_PER_JOB: u32 = 4u;
const LANES: u32 = 64u;

@group(0) @binding(0) var<storage, read> desc: array<u32>;
@group(0) @binding(1) var<storage, read_write> vecs: array<f32>;
@group(0) @binding(2) var<storage, read_write> fro: array<f32>;
@group(0) @binding(3) var<storage, read_write> hist: array<f32>;
@group(0) @binding(4) var<storage, read> d0: array<u32>;
@group(0) @binding(5) var<storage, read> d1: array<u32>;
@group(0) @binding(6) var<storage, read> d2: array<u32>;
@group(0) @binding(7) var<storage, read> d3: array<u32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<vec2<f32>, 256>;
var<workgroup> step_shared: u32;

struct Piece {
  slot: u32,
  word_base: u32,
  fmt: u32,
  cols: u32,
  rows: u32,
  row_offset: u32,
  weight: u32,
}

struct Weight {
  cols: u32,
  rows: u32,
  v_base: u32,
  u_base: u32,
  first_piece: u32,
  piece_count: u32,
  partial_base: u32,
  hist_base: u32,
}

fn piece_at(p: u32) -> Piece {
  let o = desc[0] + 8u * p;
  return Piece(desc[o], desc[o + 1u], desc[o + 2u], desc[o + 3u], desc[o + 4u], desc[o + 5u], desc[o + 6u]);
}

fn weight_at(w: u32) -> Weight {
  let o = desc[1] + 8u * w;
  return Weight(
    desc[o], desc[o + 1u], desc[o + 2u], desc[o + 3u],
    desc[o + 4u], desc[o + 5u], desc[o + 6u], desc[o + 7u],
  );
}

fn word(slot: u32, i: u32) -> u32 {
  switch slot {
    case 0u: { return d0[i]; }
    case 1u: { return d1[i]; }
    case 2u: { return d2[i]; }
    default: { return d3[i]; }
  }
}

// Element e (row-major, from the piece start) as f32.
fn element(p: Piece, e: u32) -> f32 {
  switch p.fmt {
    case FMT_F16: { return f16_bits_to_f32(half_of(word(p.slot, p.word_base + (e >> 1u)), e)); }
    case FMT_BF16: { return bf16_bits_to_f32(half_of(word(p.slot, p.word_base + (e >> 1u)), e)); }
    default: { return bitcast<f32>(word(p.slot, p.word_base + e)); }
  }
}

// x² added exactly into a df32 sum (F16/BF16 squares are exact in f32).
fn add_square(acc: vec2<f32>, x: f32, fmt: u32) -> vec2<f32> {
  if (fmt < FMT_F32) {
    return df_add_f(acc, x * x);
  }
  let s = split12(x);
  var r = df_add_f(acc, s.x * s.x);
  r = df_add_f(r, 2.0 * (s.x * s.y));
  return df_add_f(r, s.y * s.y);
}

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wg.x + wg.y * nwg.x;
}

// Sum of red[0..256) into red[0] (all threads call it).
fn reduce256(li: u32) {
  for (var o = 128u; o > 0u; o >>= 1u) {
    workgroupBarrier();
    if (li < o) {
      red[li] += red[li + o];
    }
  }
  workgroupBarrier();
}

// A deterministic start vector: a fixed hash of the column index (the same
// for every batch and run), in (-1, 1).
fn start_value(c: u32) -> f32 {
  var x = c * 747796405u + 2891336453u;
  x = ((x >> ((x >> 28u) + 4u)) ^ x) * 277803737u;
  x = (x >> 22u) ^ x;
  return (f32(x >> 8u) + 0.5) * (2.0 / 16777216.0) - 1.0;
}

@compute @workgroup_size(256)
fn init_start(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  opaque_zero = desc[8];
  let wi = flat_index(wg, nwg);
  if (wi >= desc[5]) {
    return;
  }
  let w = weight_at(wi);
  var s = 0.0;
  for (var c = li; c < w.cols; c += 256u) {
    let x = start_value(c);
    s += x * x;
  }
  red[li] = s;
  reduce256(li);
  let inv = 1.0 / sqrt(red[0]);
  for (var c = li; c < w.cols; c += 256u) {
    vecs[w.v_base + c] = start_value(c) * inv;
    vecs[w.v_base + w.cols + c] = 0.0;
  }
  if (li == 0u) {
    hist[w.hist_base] = 0.0;
  }
}

// u = W·v, and with WITH_FRO each row's sum of squares as df32.
@compute @workgroup_size(256)
fn row_pass(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  opaque_zero = desc[8];
  let job = flat_index(wg, nwg);
  if (job >= desc[6]) {
    return;
  }
  let jo = desc[2] + 2u * job;
  let p = piece_at(desc[jo]);
  let w = weight_at(p.weight);
  let slot = li / LANES;
  let lane = li % LANES;
  let row = desc[jo + 1u] + slot;
  var u = 0.0;
  var f = vec2<f32>(0.0, 0.0);
  if (row < p.rows) {
    let start = row * p.cols;
    for (var c = lane; c < p.cols; c += LANES) {
      let x = element(p, start + c);
      u += x * vecs[w.v_base + c];
      if (WITH_FRO) {
        f = add_square(f, x, p.fmt);
      }
    }
  }
  red[li] = u;
  red2[li] = f;
  for (var o = LANES / 2u; o > 0u; o >>= 1u) {
    workgroupBarrier();
    if (lane < o) {
      red[li] += red[li + o];
      if (WITH_FRO) {
        red2[li] = df_add(red2[li], red2[li + o]);
      }
    }
  }
  workgroupBarrier();
  if (lane == 0u && row < p.rows) {
    let r = p.row_offset + row;
    vecs[w.u_base + r] = red[li];
    if (WITH_FRO) {
      fro[2u * (w.u_base + r)] = red2[li].x;
      fro[2u * (w.u_base + r) + 1u] = red2[li].y;
    }
  }
}

// Per piece: partial = W_pieceᵀ·u_piece, one column per thread.
@compute @workgroup_size(256)
fn col_pass(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  opaque_zero = desc[8];
  let job = flat_index(wg, nwg);
  if (job >= desc[7]) {
    return;
  }
  let jo = desc[3] + 2u * job;
  let pi = desc[jo];
  let p = piece_at(pi);
  let w = weight_at(p.weight);
  let c = desc[jo + 1u] + li;
  if (c >= p.cols) {
    return;
  }
  var s = 0.0;
  for (var r = 0u; r < p.rows; r++) {
    s += element(p, r * p.cols + c) * vecs[w.u_base + p.row_offset + r];
  }
  vecs[w.partial_base + (pi - w.first_piece) * p.cols + c] = s;
}

// One Lanczos step on WᵀW: α = ‖u‖² (= vᵀWᵀWv), w = WᵀWv − αv − β_prev·v_prev,
// β = ‖w‖, v_prev = v, v = w/β; α and β go to `hist`.
@compute @workgroup_size(256)
fn lanczos(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  opaque_zero = desc[8];
  let ai = flat_index(wg, nwg);
  if (ai >= desc[9]) {
    return;
  }
  let w = weight_at(desc[desc[4] + ai]);
  if (li == 0u) {
    step_shared = u32(hist[w.hist_base]);
  }
  let step = workgroupUniformLoad(&step_shared);
  if (step >= MAX_STEPS) {
    return;
  }
  var a = 0.0;
  for (var r = li; r < w.rows; r += 256u) {
    let x = vecs[w.u_base + r];
    a += x * x;
  }
  red[li] = a;
  reduce256(li);
  let alpha = red[0];
  workgroupBarrier();
  var beta_prev = 0.0;
  if (step > 0u) {
    beta_prev = hist[w.hist_base + 1u + MAX_STEPS + step - 1u];
  }
  var b = 0.0;
  for (var c = li; c < w.cols; c += 256u) {
    var s = 0.0;
    for (var k = 0u; k < w.piece_count; k++) {
      s += vecs[w.partial_base + k * w.cols + c];
    }
    s = s - alpha * vecs[w.v_base + c] - beta_prev * vecs[w.v_base + w.cols + c];
    vecs[w.partial_base + c] = s;
    b += s * s;
  }
  red[li] = b;
  reduce256(li);
  let beta = sqrt(red[0]);
  let inv = select(0.0, 1.0 / beta, beta > 1e-30);
  for (var c = li; c < w.cols; c += 256u) {
    vecs[w.v_base + w.cols + c] = vecs[w.v_base + c];
    vecs[w.v_base + c] = vecs[w.partial_base + c] * inv;
  }
  storageBarrier();
  workgroupBarrier();
  if (li == 0u) {
    hist[w.hist_base + 1u + step] = alpha;
    hist[w.hist_base + 1u + MAX_STEPS + step] = beta;
    hist[w.hist_base] = f32(step + 1u);
  }
}
