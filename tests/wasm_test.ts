import { BackendError } from "../src/errors.ts";
import { loadAsset } from "../src/linalg/asset.ts";
import { pivotTolerance } from "../src/linalg/gram_svd.ts";
import { matrix, type RowOrthogonalizer, svd } from "./reference/matrix.ts";
import { DTYPE_CODES, Kernels, KERNELS_URL } from "../src/linalg/wasm/kernels.ts";
import { decodeFloats, encodeFloats, type FloatDType } from "../src/safetensors/dtype.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { rng } from "./rng.ts";

/** The kernels' one-sided Jacobi step as the reference SVD's row orthogonalizer. */
function kernelJacobi(k: Kernels): RowOrthogonalizer {
  return (rows, count, length, vt) => {
    k.reset();
    const w = k.alloc(rows.byteLength), v = k.alloc(vt.byteLength), norms = k.alloc(count * 8);
    k.f64(w, rows.length).set(rows);
    k.f64(v, vt.length).set(vt);
    k.exports.orthogonalizeRows(w, count, length, v, vt.length / count, norms, Number.EPSILON);
    rows.set(k.f64(w, rows.length));
    vt.set(k.f64(v, vt.length));
  };
}

/** Same value (NaN equals NaN, −0 differs from +0). */
function same(a: number, b: number): boolean {
  return Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));
}

/**
 * A·B (m × n from m × k and k × n, leading dimensions lda and ldb) summed in f32 in order of
 * the inner index, without fused multiply-adds: what the f32 kernels compute.
 */
function f32Product(
  x: { a: ArrayLike<number>; lda: number; b: ArrayLike<number>; ldb: number },
  m: number,
  k: number,
  n: number,
): Float32Array {
  const c = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        s = Math.fround(s + Math.fround(x.a[i * x.lda + p] * x.b[p * x.ldb + j]));
      }
      c[i * n + j] = s;
    }
  }
  return c;
}

Deno.test("kernels.wasm is what tools/build_wasm.ts builds from the sources", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/kernels.wasm`;
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../tools/build_wasm.ts", import.meta.url).href, "--out", out],
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(code, 0, new TextDecoder().decode(stderr));
    assertEquals(await Deno.readFile(out), await Deno.readFile(KERNELS_URL));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadAsset reads file URLs and reports a missing one as a BackendError", async () => {
  const bytes = await loadAsset(KERNELS_URL);
  assertEquals(Array.from(bytes.subarray(0, 4)), [0, 0x61, 0x73, 0x6d]); // "\0asm"
  await assertRejects(
    () => loadAsset(new URL("./no-such-asset.bin", import.meta.url)),
    BackendError,
    "no-such-asset.bin: no such file",
  );
});

Deno.test("decodeF32 / decodeRowF64 / decodeTransposedF64: every F16 and BF16 bit pattern decodes exactly", async () => {
  const k = await Kernels.load();
  const n = 65536 + 3; // a tail after the vector part
  const bits = Uint16Array.from({ length: n }, (_, i) => i & 0xffff);
  const bytes = new Uint8Array(bits.buffer);
  // For the f64 path: the first 65536 values as a 16384 × 4 matrix (the SIMD columns), the last
  // three as a 3 × 1 one (scalar rows and columns).
  const rows = 16384, ld = rows;
  for (const dtype of ["F16", "BF16"] as const) {
    k.reset();
    const src = k.put(bytes), d32 = k.alloc(n * 4);
    const d64 = k.alloc(4 * ld * 8), tail = k.alloc(4 * 8);
    const row = k.alloc(n * 8);
    k.exports.decodeF32(src, d32, n, DTYPE_CODES[dtype]);
    k.exports.decodeRowF64(src, row, n, DTYPE_CODES[dtype]);
    k.exports.decodeTransposedF64(src, d64, rows, 4, ld, DTYPE_CODES[dtype]);
    k.exports.decodeTransposedF64(src + 65536 * 2, tail, 3, 1, 4, DTYPE_CODES[dtype]);
    const expected = decodeFloats(bytes, dtype, Float64Array);
    const f32 = k.f32(d32, n), t = k.f64(d64, 4 * ld), t3 = k.f64(tail, 3), r64 = k.f64(row, n);
    const f64 = (i: number) => i < 65536 ? t[(i % 4) * ld + Math.floor(i / 4)] : t3[i - 65536];
    let bad = 0;
    for (let i = 0; i < n; i++) {
      if (!same(f32[i], expected[i]) || !same(f64(i), expected[i]) || !same(r64[i], expected[i])) {
        bad++;
      }
    }
    assertEquals(bad, 0, `${dtype}: ${bad} values differ`);
  }
});

Deno.test("decodeF32 / decodeRowF64 / decodeTransposedF64: F32 and F64 (F64 → f32 rounds to nearest)", async () => {
  const k = await Kernels.load();
  const values = Float64Array.from({ length: 103 }, rng(1)).map((x) => x * 1e3 + 1 / 3);
  for (const dtype of ["F32", "F64"] as const) {
    k.reset();
    const bytes = encodeFloats(values, dtype);
    const src = k.put(bytes), d32 = k.alloc(103 * 4), d64 = k.alloc(104 * 8);
    k.exports.decodeF32(src, d32, 103, DTYPE_CODES[dtype]);
    k.exports.decodeTransposedF64(src, d64, 103, 1, 104, DTYPE_CODES[dtype]);
    assertEquals(Array.from(k.f32(d32, 103)), Array.from(decodeFloats(bytes, dtype, Float32Array)));
    assertEquals(Array.from(k.f64(d64, 103)), Array.from(decodeFloats(bytes, dtype, Float64Array)));
    if (dtype === "F32") {
      const row = k.alloc(103 * 8);
      k.exports.decodeRowF64(src, row, 103, DTYPE_CODES[dtype]);
      assertEquals(
        Array.from(k.f64(row, 103)),
        Array.from(decodeFloats(bytes, "F32", Float64Array)),
      );
    }
  }
});

Deno.test("decodeTransposedF64: layout and zero padding", async () => {
  const k = await Kernels.load();
  const next = rng(2);
  for (const dtype of ["F16", "BF16", "F32", "F64"] as const) {
    for (const [rows, cols] of [[7, 9], [10, 8], [1, 3], [33, 32]]) {
      k.reset();
      const raw = encodeFloats(Float64Array.from({ length: rows * cols }, next), dtype);
      const values = decodeFloats(raw, dtype, Float64Array);
      const src = k.put(raw);
      const tStride = rows + (rows & 1);
      const tPtr = k.alloc(cols * tStride * 8);
      k.exports.decodeTransposedF64(src, tPtr, rows, cols, tStride, DTYPE_CODES[dtype]);
      const t = k.f64(tPtr, cols * tStride);
      for (let c = 0; c < cols; c++) {
        for (let r = 0; r < tStride; r++) {
          assertEquals(t[c * tStride + r], r < rows ? values[r * cols + c] : 0);
        }
      }
    }
  }
});

Deno.test("gramRows, matmulF64 against plain products", async () => {
  const k = await Kernels.load();
  const next = rng(3);
  // Every row count around the 4 × 2 and 2 × 2 tiles, one and several column blocks.
  const shapes = [[1, 2], [2, 4], [3, 6], [4, 8], [5, 6], [6, 10], [7, 300], [8, 1000], [33, 70]];
  for (const [r, n] of [...shapes, [32, 640], [64, 200]]) {
    k.reset();
    const x = k.alloc(r * n * 8), g = k.alloc(r * r * 8);
    const xs = Float64Array.from({ length: r * n }, next);
    k.f64(x, r * n).set(xs);
    k.exports.gramRows(x, r, n, g);
    const gs = k.f64(g, r * r);
    const block = k.exports.gramBlockWidth(r);
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < r; j++) {
        let s = 0;
        for (let c = 0; c < n; c++) s += xs[i * n + c] * xs[j * n + c];
        assert(Math.abs(gs[i * r + j] - s) <= 1e-14 * n, `G[${i}][${j}]`);
        assertEquals(gs[i * r + j], gs[j * r + i]);
        // The documented order, whatever tile computed the entry: per column block, even and
        // odd columns summed apart (the two f64x2 lanes), then added to the entry.
        let exact = 0;
        for (let c0 = 0; c0 < n; c0 += block) {
          let even = 0, odd = 0;
          for (let c = c0; c < Math.min(n, c0 + block); c += 2) {
            even += xs[i * n + c] * xs[j * n + c];
            odd += xs[i * n + c + 1] * xs[j * n + c + 1];
          }
          exact += even + odd;
        }
        assertEquals(gs[i * r + j], exact, `G[${i}][${j}] (${r} × ${n})`);
      }
    }
  }
  for (const [m, kk, n] of [[5, 3, 7], [4, 6, 19], [2, 1, 16]]) {
    k.reset();
    const a = k.alloc(m * kk * 8), b = k.alloc(kk * n * 8), c = k.alloc(m * n * 8);
    const as = Float64Array.from({ length: m * kk }, next);
    const bs = Float64Array.from({ length: kk * n }, next);
    k.f64(a, as.length).set(as);
    k.f64(b, bs.length).set(bs);
    k.exports.matmulF64(a, kk, 1, b, n, c, n, m, kk, n);
    const cs = k.f64(c, m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < kk; p++) s += as[i * kk + p] * bs[p * n + j];
        assertEquals(cs[i * n + j], s); // same order of summation
      }
    }
  }
});

Deno.test("sumSquares equals an f64 sum of the decoded squares, for every dtype", async () => {
  const k = await Kernels.load();
  const next = rng(4);
  // Include zeros, subnormal halves and large values.
  const values = Float64Array.from(
    { length: 1003 },
    (_, i) =>
      i % 17 === 0 ? 0 : i % 13 === 0 ? 3e-6 * next() : i % 11 === 0 ? 6e4 * next() : next(),
  );
  for (const dtype of ["F16", "BF16", "F32", "F64"] as const satisfies FloatDType[]) {
    k.reset();
    const bytes = encodeFloats(values, dtype);
    const expected = decodeFloats(bytes, dtype, Float64Array).reduce((s, x) => s + x * x, 0);
    const got = k.exports.sumSquares(k.put(bytes), values.length, DTYPE_CODES[dtype]);
    assert(Math.abs(got - expected) <= 1e-14 * expected, `${dtype}: ${got} vs ${expected}`);
  }
});

Deno.test("gramMatvec and rowsTimesTransposed against f64 products", async () => {
  const k = await Kernels.load();
  const next = rng(5);
  for (const [rows, cols] of [[1, 1], [7, 13], [9, 2050], [4, 4], [6, 3]]) {
    k.reset();
    const w = Float32Array.from({ length: rows * cols }, next);
    const v = Float32Array.from({ length: cols }, next);
    const wp = k.alloc(w.byteLength), vp = k.alloc(v.byteLength), zp = k.alloc(v.byteLength);
    const scratch = k.alloc(32);
    k.f32(wp, w.length).set(w);
    k.f32(vp, v.length).set(v);
    k.exports.gramMatvec(wp, rows, cols, vp, zp, scratch);
    const y = Array.from({ length: rows }, (_, i) => {
      let s = 0;
      for (let c = 0; c < cols; c++) s += w[i * cols + c] * v[c];
      return s;
    });
    const z = k.f32(zp, cols);
    for (let c = 0; c < cols; c++) {
      let s = 0, scale = 0;
      for (let i = 0; i < rows; i++) {
        s += y[i] * w[i * cols + c];
        scale += Math.abs(y[i] * w[i * cols + c]);
      }
      assert(Math.abs(z[c] - s) <= 1e-5 * (scale + 1e-30), `z[${c}] ${z[c]} vs ${s}`);
    }
    const r = 3;
    const a = Float32Array.from({ length: r * cols }, next);
    const ap = k.alloc(a.byteLength), yp = k.alloc(rows * r * 8);
    k.f32(ap, a.length).set(a);
    k.exports.rowsTimesTransposed(wp, rows, cols, ap, r, yp, scratch);
    const ys = k.f64(yp, rows * r);
    for (let i = 0; i < rows; i++) {
      for (let p = 0; p < r; p++) {
        let s = 0, scale = 0;
        for (let c = 0; c < cols; c++) {
          s += w[i * cols + c] * a[p * cols + c];
          scale += Math.abs(w[i * cols + c] * a[p * cols + c]);
        }
        assert(Math.abs(ys[i * r + p] - s) <= 1e-6 * scale);
      }
    }
  }
});

Deno.test("the arena grows the memory on demand and reuses it after reset", async () => {
  const k = await Kernels.load();
  const before = k.memoryBytes;
  const p = k.alloc(before + 100_000);
  assert(k.memoryBytes >= p + before + 100_000);
  k.u8(p, 4).set([1, 2, 3, 4]);
  const size = k.memoryBytes;
  k.reset();
  assertEquals(k.alloc(16), p);
  assertEquals(k.memoryBytes, size);
});

Deno.test("the kernels' Jacobi step gives the same SVD as the TypeScript one", async () => {
  const k = await Kernels.load();
  const next = rng(6);
  for (const [m, n] of [[20, 20], [33, 7], [6, 15]]) {
    const a = matrix(m, n, Array.from({ length: m * n }, next));
    const ts = svd(a), wasm = svd(a, { orthogonalize: kernelJacobi(k) });
    ts.s.forEach((s, i) => assert(Math.abs(wasm.s[i] - s) <= 1e-14 * ts.s[0], `σ${i}`));
    const rebuilt = matrix(m, n);
    wasm.s.forEach((s, i) => {
      for (let r = 0; r < m; r++) {
        for (let c = 0; c < n; c++) {
          rebuilt.data[r * n + c] += wasm.u.data[r * wasm.u.cols + i] * s *
            wasm.v.data[c * wasm.v.cols + i];
        }
      }
    });
    rebuilt.data.forEach((x, i) => assert(Math.abs(x - a.data[i]) < 1e-14));
  }
});

Deno.test("pivotedCholesky: Rᵀ·R = G in pivot order, R₁₁ upper triangular, rank of a singular G", async () => {
  const k = await Kernels.load();
  const next = rng(7);
  const cases: [number, number, boolean][] = [[1, 3, false], [6, 9, false], [9, 40, true], [
    12,
    5,
    false,
  ]];
  for (const [r, cols, dupe] of cases) {
    k.reset();
    // G = X·Xᵀ of r random rows (rank min(r, cols)), with row 0 copied to row r − 1 if `dupe`.
    const xs = Array.from({ length: r }, () => Array.from({ length: cols }, next));
    if (dupe) xs[r - 1] = xs[0].slice();
    const rank = Math.min(r - (dupe ? 1 : 0), cols);
    const g = k.alloc(r * r * 8), rt = k.alloc(r * r * 8);
    const piv = k.alloc(r * 4), d = k.alloc(r * 8);
    const gs = Float64Array.from({ length: r * r }, (_, i) => {
      const [a, b] = [Math.floor(i / r), i % r];
      return xs[a].reduce((s, x, c) => s + x * xs[b][c], 0);
    });
    k.f64(g, gs.length).set(gs);
    const tolerance = pivotTolerance(gs.filter((_, i) => i % (r + 1) === 0), cols);
    const kept = k.exports.pivotedCholesky(g, r, tolerance, rt, piv, d);
    assertEquals(kept, rank, `r=${r}: kept`);
    const rts = k.f64(rt, r * r), p = k.i32(piv, r);
    assertEquals([...p].sort((a, b) => a - b), Array.from({ length: r }, (_, i) => i));
    for (let i = 0; i < kept; i++) {
      assert(rts[p[i] * r + i] > 0, "positive diagonal");
      for (let j = 0; j < i; j++) assertEquals(rts[p[j] * r + i], 0); // below the diagonal
    }
    const scale = Math.max(...gs.map(Math.abs));
    for (let a = 0; a < r; a++) {
      for (let b = 0; b < r; b++) {
        let s = 0;
        for (let i = 0; i < kept; i++) s += rts[a * r + i] * rts[b * r + i];
        assert(Math.abs(s - gs[a * r + b]) <= 1e-13 * scale, `r=${r}: (RᵀR)[${a}][${b}]`);
      }
    }
  }
});

Deno.test("matmulF64 on a transposed operand, and backSubstitute, against plain products", async () => {
  const k = await Kernels.load();
  const next = rng(8);
  for (const [m, kk, n] of [[5, 3, 7], [4, 6, 19], [2, 1, 16], [9, 12, 1]]) {
    k.reset();
    const x = k.alloc(kk * m * 8), y = k.alloc(kk * n * 8), c = k.alloc(m * (n + 1) * 8);
    const xs = Float64Array.from({ length: kk * m }, next);
    const ys = Float64Array.from({ length: kk * n }, next);
    k.f64(x, xs.length).set(xs);
    k.f64(y, ys.length).set(ys);
    k.exports.matmulF64(x, 1, m, y, n, c, n + 1, m, kk, n);
    const cs = k.f64(c, m * (n + 1));
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < kk; p++) s += xs[p * m + i] * ys[p * n + j];
        assertEquals(cs[i * (n + 1) + j], s); // same order of summation
      }
    }
  }
  // R₁₁·X = Y for the leading kept × kept triangle of an r × r factor in a pivot order.
  for (const [r, kept, count] of [[1, 1, 1], [7, 5, 3], [11, 11, 8], [13, 9, 1]]) {
    k.reset();
    const pivots = Array.from({ length: r }, (_, i) => i).sort(() => next());
    const rt = k.alloc(r * r * 8), piv = k.alloc(r * 4), y = k.alloc(kept * count * 8);
    const rts = k.f64(rt, r * r);
    rts.fill(0);
    for (let i = 0; i < kept; i++) {
      for (let j = i; j < r; j++) rts[pivots[j] * r + i] = j === i ? 1 + Math.abs(next()) : next();
    }
    k.i32(piv, r).set(pivots);
    const ys = Float64Array.from({ length: kept * count }, next);
    k.f64(y, ys.length).set(ys);
    k.exports.backSubstitute(rt, r, piv, kept, y, count, count);
    const xs = k.f64(y, kept * count);
    for (let i = 0; i < kept; i++) {
      for (let c = 0; c < count; c++) {
        let s = 0;
        for (let j = i; j < kept; j++) s += k.f64(rt, r * r)[pivots[j] * r + i] * xs[j * count + c];
        assert(Math.abs(s - ys[i * count + c]) < 1e-13, `R₁₁·X = Y at ${i}, ${c}`);
      }
    }
  }
});

Deno.test("symmetricEigenvectors: C·z = λ·z with orthonormal Z, repeated and zero eigenvalues", async () => {
  const k = await Kernels.load();
  const next = rng(9);
  const random = (n: number) => {
    const x = Float64Array.from({ length: n * n }, next);
    return Float64Array.from({ length: n * n }, (_, i) => {
      const [a, b] = [Math.floor(i / n), i % n];
      return x[a * n + b] + x[b * n + a];
    });
  };
  const cases: [string, number, Float64Array][] = [
    ["1×1", 1, new Float64Array([3])],
    ["2×2", 2, new Float64Array([2, 1, 1, 2])],
    ["zero", 4, new Float64Array(16)],
    ["identity", 5, Float64Array.from({ length: 25 }, (_, i) => i % 6 === 0 ? 1 : 0)],
    ["random 17", 17, random(17)],
    ["random 64", 64, random(64)],
  ];
  // A Gram matrix with a repeated eigenvalue and a zero one: X·Xᵀ, X = [I₃ | I₃ | 0] padded.
  const g = new Float64Array(36);
  for (let i = 0; i < 3; i++) g[i * 6 + i] = 2;
  g[3 * 6 + 4] = g[4 * 6 + 3] = 1;
  g[3 * 6 + 3] = g[4 * 6 + 4] = 1;
  cases.push(["repeated + zero", 6, g]);
  for (const [what, n, cs] of cases) {
    k.reset();
    const c = k.alloc(n * n * 8), zt = k.alloc(n * n * 8), d = k.alloc(n * 8);
    const e = k.alloc(n * 8), w = k.alloc(2 * n * 8);
    k.f64(c, n * n).set(cs);
    assertEquals(k.exports.symmetricEigenvectors(c, n, zt, d, e, w), 0, what);
    const z = k.f64(zt, n * n), lambda = k.f64(d, n);
    const scale = Math.max(1, ...cs.map(Math.abs));
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let dot = 0, cz = 0;
        for (let p = 0; p < n; p++) {
          dot += z[i * n + p] * z[j * n + p];
          cz += cs[j * n + p] * z[i * n + p];
        }
        assert(Math.abs(dot - (i === j ? 1 : 0)) < 1e-13, `${what}: ZᵀZ = I at ${i}, ${j}`);
        assert(Math.abs(cz - lambda[i] * z[i * n + j]) < 1e-13 * n * scale, `${what}: C·z = λ·z`);
      }
    }
  }
});

Deno.test("matmulF32 against a plain f32 product, every row and column tail and tile", async () => {
  const k = await Kernels.load();
  const next = rng(11);
  // Tiles of 12, 8 and 4 columns and their tails, row blocks of 4 and the rows left.
  const shapes = [[3, 2, 1], [4, 5, 3], [2, 7, 17], [5, 32, 21], [1, 3, 36], [9, 6, 20]];
  shapes.push([7, 4, 291], [4, 3, 12], [8, 32, 24], [6, 5, 44], [12, 32, 256]);
  for (const [m, kk, n] of shapes) {
    k.reset();
    const a = k.alloc(m * kk * 4), b = k.alloc(kk * n * 4), c = k.alloc(m * n * 4);
    const as = Float32Array.from({ length: m * kk }, next);
    const bs = Float32Array.from({ length: kk * n }, next);
    k.f32(a, as.length).set(as);
    k.f32(b, bs.length).set(bs);
    k.exports.matmulF32(a, kk, b, n, c, n, m, kk, n);
    const want = f32Product({ a: as, lda: kk, b: bs, ldb: n }, m, kk, n);
    assertEquals(k.f32(c, m * n), want, `m ${m}, k ${kk}, n ${n}`);
  }
});

Deno.test("encodeF16 / encodeBF16 equal encodeFloats: ties, subnormals, overflow, NaN, random bits", async () => {
  const k = await Kernels.load();
  const next = rng(12);
  const edges = [
    0,
    0x00000001,
    0x007fffff,
    0x00800000, // f32 zero, subnormals, smallest normal
    0x33000000,
    0x33000001,
    0x337fffff,
    0x33800000,
    0x33c00000,
    0x34200000, // half subnormal ties
    0x387fe000,
    0x387ff000,
    0x387fffff,
    0x38800000, // largest half subnormal, to the smallest normal
    0x3f801000,
    0x3f803000,
    0x3f800fff,
    0x3f801001, // half ties to even, near ties
    0x3f808000,
    0x3f818000,
    0x3f807fff, // BF16 ties
    0x477fe000,
    0x477fefff,
    0x477ff000,
    0x477fffff, // largest half, its rounding edge to inf
    0x7f7f7fff,
    0x7f7f8000,
    0x7f7fffff, // BF16 rounding edge to inf
    0x7f800000,
    0x7f800001,
    0x7fbfffff,
    0x7fc00000,
    0x7fc12345,
    0x7fffffff, // inf, NaNs
  ];
  const bits = new Uint32Array(4099);
  edges.forEach((e, i) => {
    bits[2 * i] = e;
    bits[2 * i + 1] = (e | 0x80000000) >>> 0;
  });
  for (let i = 2 * edges.length; i < bits.length; i++) bits[i] = ((next() + 0.5) * 2 ** 32) >>> 0;
  const values = new Float32Array(bits.buffer);
  const src = k.alloc(values.byteLength), dst = k.alloc(values.length * 2);
  k.f32(src, values.length).set(values);
  for (const dtype of ["F16", "BF16"] as const) {
    for (const n of [values.length, 8, 3, 0]) {
      const encode = dtype === "F16" ? k.exports.encodeF16 : k.exports.encodeBF16;
      encode(src, dst, n);
      assertEquals(k.u8(dst, 2 * n), encodeFloats(values.subarray(0, n), dtype), `${dtype} × ${n}`);
    }
  }
});

Deno.test("compactRowsF32 drops the row padding", async () => {
  const k = await Kernels.load();
  const rows = 3, cols = 6, stride = 8;
  const src = k.alloc(rows * stride * 4), dst = k.alloc(rows * cols * 4);
  k.f32(src, rows * stride).set(Float32Array.from({ length: rows * stride }, (_, i) => i));
  k.exports.compactRowsF32(src, stride, dst, rows, cols);
  const expected = Float32Array.from(
    { length: rows * cols },
    (_, i) => (i / cols | 0) * stride + i % cols,
  );
  assertEquals(k.f32(dst, rows * cols), expected);
});

Deno.test("gramOf equals gramRows on the decoded matrix, bit for bit, for every dtype", async () => {
  const k = await Kernels.load();
  const next = rng(21);
  const dtypes: FloatDType[] = ["F16", "BF16", "F32", "F64"];
  // (rows, cols) of the stored matrix; several column blocks where r is large, odd lengths.
  const shapes = [[5, 7], [33, 600], [64, 301], [2, 1], [40, 2]];
  for (const dtype of dtypes) {
    for (const [rows, cols] of shapes) {
      for (const transposed of [false, true]) {
        k.reset();
        const stored = encodeFloats(Float64Array.from({ length: rows * cols }, next), dtype);
        const values = decodeFloats(stored, dtype, Float64Array);
        // X as rows of even length, zero-padded: what gramRows takes.
        const r = transposed ? cols : rows, n = transposed ? rows : cols, stride = n + (n & 1);
        const xs = new Float64Array(r * stride);
        for (let i = 0; i < rows; i++) {
          for (let j = 0; j < cols; j++) {
            const v = values[i * cols + j];
            if (transposed) xs[j * stride + i] = v;
            else xs[i * stride + j] = v;
          }
        }
        const src = k.put(stored), x = k.alloc(xs.byteLength);
        const g1 = k.alloc(r * r * 8), g2 = k.alloc(r * r * 8);
        const scratch = k.alloc(r * k.exports.gramBlockWidth(r) * 12);
        k.f64(x, xs.length).set(xs);
        k.exports.gramRows(x, r, stride, g1);
        k.exports.gramOf(src, DTYPE_CODES[dtype], rows, cols, transposed, g2, scratch);
        assertEquals(k.f64(g2, r * r), k.f64(g1, r * r), `${dtype} ${rows}×${cols} ${transposed}`);
      }
    }
  }
});

Deno.test("rebuildUp / rebuildDown equal decode, in-order f32 products and encodeFloats", async () => {
  const k = await Kernels.load();
  const next = rng(22);
  const codes = { F16: 0, BF16: 1, F32: 2 } as const;
  // Row blocks of 64 and column blocks of 256 with tails; kept counts with and without padding.
  const cases = [
    { out: 150, r: 7, cols: 300, kept: 5, from: "F16", to: "F16" },
    { out: 64, r: 4, cols: 256, kept: 4, from: "BF16", to: "BF16" },
    { out: 3, r: 9, cols: 5, kept: 1, from: "F32", to: "F32" },
    { out: 70, r: 3, cols: 513, kept: 3, from: "F64", to: "F16" },
  ] as const;
  for (const { out, r, cols, kept, from, to } of cases) {
    k.reset();
    const ldt = (kept + 3) & ~3;
    const b = encodeFloats(Float64Array.from({ length: out * r }, next), from);
    const a = encodeFloats(Float64Array.from({ length: r * cols }, next), from);
    const bv = decodeFloats(b, from, Float32Array), av = decodeFloats(a, from, Float32Array);
    const t = new Float32Array(r * ldt), tat = Float32Array.from({ length: kept * r }, next);
    for (let p = 0; p < r; p++) for (let j = 0; j < kept; j++) t[p * ldt + j] = next();
    const up = f32Product({ a: bv, lda: r, b: t, ldb: ldt }, out, r, kept);
    const down = f32Product({ a: tat, lda: r, b: av, ldb: cols }, kept, r, cols);
    const size = to === "F32" ? 4 : 2;
    const bp = k.put(b), ap = k.put(a), tp = k.alloc(t.byteLength), tatp = k.alloc(tat.byteLength);
    const scratch = k.alloc(Math.max(64 * (r + 2 * ldt), 256 * (r + kept)) * 4);
    const upOut = k.alloc(out * kept * size), downOut = k.alloc(kept * cols * size);
    k.f32(tp, t.length).set(t);
    k.f32(tatp, tat.length).set(tat);
    k.exports.rebuildUp(bp, DTYPE_CODES[from], out, r, tp, ldt, kept, upOut, codes[to], scratch);
    k.exports.rebuildDown(ap, DTYPE_CODES[from], r, cols, tatp, kept, downOut, codes[to], scratch);
    const what = `${from} → ${to}, ${out}×${r}·${r}×${kept}, ${kept}×${r}·${r}×${cols}`;
    assertEquals(k.u8(upOut, out * kept * size), encodeFloats(up, to), `up: ${what}`);
    assertEquals(k.u8(downOut, kept * cols * size), encodeFloats(down, to), `down: ${what}`);
  }
});
