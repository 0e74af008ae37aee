import { assert, assertEquals, assertRejects, assertRelClose } from "./assert.ts";
import { LoraError } from "../src/errors.ts";
import { loadLora, type LoraLayer, readLoraFile } from "../src/lora/lora_file.ts";
import { mergeLoras } from "../src/lora/merge.ts";
import { mergedName, parseMergeSpec } from "../src/lora/merge_spec.ts";
import { decodeFloats } from "../src/safetensors/dtype.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";

// ---- member syntax (docs/design.md, "Weighted merges") ----

Deno.test("merge spec: split at the last ':' only before a number", () => {
  assertEquals(parseMergeSpec("a.safetensors"), undefined);
  assertEquals(parseMergeSpec("C:\\x\\a.safetensors"), undefined);
  assertEquals(parseMergeSpec("dir:with:colons/a.safetensors"), undefined);
  assertEquals(parseMergeSpec("C:\\x\\a.safetensors:0.5"), [{
    path: "C:\\x\\a.safetensors",
    weight: 0.5,
  }]);
  assertEquals(parseMergeSpec("a.safetensors:0.7,b.safetensors"), [
    { path: "a.safetensors", weight: 0.7 },
    { path: "b.safetensors", weight: 1 },
  ]);
  assertEquals(parseMergeSpec("a.safetensors,C:\\b.safetensors:-0.3"), [
    { path: "a.safetensors", weight: 1 },
    { path: "C:\\b.safetensors", weight: -0.3 },
  ]);
  // Python float() forms; an empty weight is 1.
  const forms: [string, number][] = [
    ["1e-3", 0.001],
    [".5", 0.5],
    ["1.", 1],
    ["-2", -2],
    ["+1_000", 1000],
    [" 0.25 ", 0.25],
    ["1E+2", 100],
    ["", 1],
    ["0", 0],
  ];
  for (const [text, weight] of forms) {
    assertEquals(
      parseMergeSpec(`a.safetensors:${text}`),
      [{ path: "a.safetensors", weight }],
      text,
    );
  }
  // Not numbers: part of the path.
  for (const text of ["x", "1__0", "0x10", "e5", "1e"]) {
    assertEquals(parseMergeSpec(`a:${text}`), undefined, text);
    assertEquals(parseMergeSpec(`a:${text},b`)?.[0], { path: `a:${text}`, weight: 1 }, text);
  }
});

Deno.test("merge spec errors", () => {
  for (
    const [spec, pattern] of [
      ["a.safetensors,", /merge spec 'a\.safetensors,': member 2 has an empty path/],
      [",a.safetensors", /member 1 has an empty path/],
      [":0.5", /member 1 has an empty path/],
      [
        "a.safetensors:inf",
        /member 1 \('a\.safetensors:inf'\) has a weight that is not a finite number/,
      ],
      ["a.safetensors:1,b.safetensors:nan", /member 2 .* not a finite number/],
    ] as const
  ) {
    try {
      parseMergeSpec(spec);
      throw new Error(`no error for ${spec}`);
    } catch (e) {
      assert(e instanceof LoraError, `${spec}: ${e}`);
      assert(pattern.test(e.message), `${spec}: ${e.message}`);
    }
  }
});

Deno.test("merged names follow the original's naming", () => {
  const name = (spec: string) => mergedName(parseMergeSpec(spec)!);
  assertEquals(
    name("style_lora.safetensors:0.6,char_lora.safetensors:0.4"),
    "style(0.60)+char(0.40)",
  );
  assertEquals(name("char_a.safetensors,char_b.safetensors"), "char");
  assertEquals(name("dir/my-style v2.safetensors:0.5,x/my_char.safetensors"), "my(0.50+1.00)");
  assertEquals(name("a b.safetensors:-0.3,c.safetensors:1.0000001"), "a(-0.30)+c");
  assertEquals(name("x.safetensors:0.125"), "x(0.12)"); // %.2f: exact tie, to even
  assertEquals(name("x.safetensors:0.375,y:2.675"), "x(0.38)+y(2.67)");
});

// ---- merge maths ----

const TMP = await Deno.makeTempDir({ prefix: "merge_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

/** Deterministic values exactly representable in F16 (multiples of 1/64 in [-2, 2)). */
function values(n: number, seed: number): number[] {
  let s = seed;
  return Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return (Math.floor((s / 2147483648) * 256) - 128) / 64;
  });
}

function tensor(name: string, dtype: "F16" | "F32", shape: number[], seed: number): TensorSource {
  const v = values(shape.reduce((a, b) => a * b, 1), seed);
  const data = dtype === "F16" ? Float16Array.from(v) : Float32Array.from(v);
  return { name, dtype, shape, data: new Uint8Array(data.buffer) };
}

function alpha(name: string, value: number): TensorSource {
  return {
    name: `${name}.alpha`,
    dtype: "F16",
    shape: [],
    data: new Uint8Array(Float16Array.of(value).buffer),
  };
}

/** A layer: down r×in(×3×3), up out×r(×1×1). */
function layer(
  name: string,
  dims: { out: number; r: number; in: number; conv?: boolean; alpha?: number },
  seed: number,
  dtype: "F16" | "F32" = "F16",
): TensorSource[] {
  const k = dims.conv ? [3, 3] : [];
  const one = dims.conv ? [1, 1] : [];
  const list = [
    tensor(`${name}.lora_down.weight`, dtype, [dims.r, dims.in, ...k], seed),
    tensor(`${name}.lora_up.weight`, dtype, [dims.out, dims.r, ...one], seed + 1),
  ];
  if (dims.alpha !== undefined) list.push(alpha(name, dims.alpha));
  return list;
}

async function write(name: string, tensors: TensorSource[], metadata?: Record<string, string>) {
  const path = `${TMP}/${name}`;
  await writeSafetensors(path, tensors, { metadata });
  return path;
}

/** weight · alpha/rank · up · down, densely, in float64 (out × inFlat). */
function delta(l: LoraLayer, weight = 1, scale = l.factors.scale): Float64Array {
  const { up, down, out, rank, inFlat } = l.factors;
  const b = decodeFloats(up.bytes, up.dtype, Float64Array);
  const a = decodeFloats(down.bytes, down.dtype, Float64Array);
  const d = new Float64Array(out * inFlat);
  for (let i = 0; i < out; i++) {
    for (let k = 0; k < rank; k++) {
      const bik = weight * scale * b[i * rank + k];
      for (let j = 0; j < inFlat; j++) d[i * inFlat + j] += bik * a[k * inFlat + j];
    }
  }
  return d;
}

function assertMatrixClose(actual: Float64Array, expected: Float64Array, tol: number, msg: string) {
  assertEquals(actual.length, expected.length, msg);
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < actual.length; i++) {
    diff += (actual[i] - expected[i]) ** 2;
    norm += expected[i] ** 2;
  }
  assert(norm > 0, `${msg}: reference is zero`);
  assert(
    Math.sqrt(diff / norm) <= tol,
    `${msg}: relative error ${Math.sqrt(diff / norm)} > ${tol}`,
  );
}

function sum(...ms: Float64Array[]): Float64Array {
  const out = new Float64Array(ms[0].length);
  for (const m of ms) for (let i = 0; i < m.length; i++) out[i] += m[i];
  return out;
}

const A = await write("alpha_a-v1.safetensors", [
  ...layer("L1", { out: 6, r: 4, in: 5, alpha: 2 }, 1),
  ...layer("L2", { out: 3, r: 2, in: 7, alpha: 1 }, 3),
  ...layer("L3", { out: 4, r: 2, in: 3, conv: true, alpha: 1 }, 5),
  tensor("emb", "F16", [2, 2], 7),
], { ss_network_dim: "4", origin: "a" });
const B = await write("beta.safetensors", [
  ...layer("L1", { out: 6, r: 3, in: 5, alpha: 3 }, 11, "F32"),
  ...layer("L3", { out: 4, r: 4, in: 3, conv: true }, 13), // no alpha: alpha = rank
  tensor("emb", "F16", [2, 2], 17),
  tensor("other.x", "F16", [3], 19),
]);
const C = await write("gamma.safetensors", [
  ...layer("L1", { out: 6, r: 8, in: 5, alpha: 8 }, 21),
  ...layer("L4", { out: 2, r: 2, in: 2, alpha: 1 }, 23),
]);

Deno.test("merge: merged delta = Σ wᵢ·αᵢ/rᵢ·Bᵢ·Aᵢ (negative weight, zero weight, missing layer)", async () => {
  const [a, b, c] = await Promise.all([A, B, C].map(readLoraFile));
  const find = (m: typeof a, n: string) => m.layers.find((l) => l.name === n)!;
  const spec = `${A}:0.7,${B}:-0.3,${C}:0`;
  const merged = await loadLora(spec);

  // L4 exists only in the zero-weighted member: its delta is zero, it is left out.
  assertEquals(merged.layers.map((l) => l.name), ["L1", "L2", "L3"]);
  const [l1, l2, l3] = merged.layers;

  // L1: A and B contribute, C (weight 0) does not: R = 4 + 3.
  const ref1 = sum(delta(find(a, "L1"), 0.7), delta(find(b, "L1"), -0.3));
  assertMatrixClose(delta(l1), ref1, 1e-12, "L1 via scale");
  assertMatrixClose(delta(l1, 1, l1.alpha / l1.factors.rank), ref1, 1e-12, "L1 via alpha/R");
  const cA = 0.7 * 2 / 4;
  const cB = 0.3 * 3 / 3;
  const geo = Math.pow(cA, 4 / 7) * Math.pow(cB, 3 / 7);
  assertEquals([l1.factors.rank, l1.factors.out, l1.factors.inFlat], [7, 6, 5]);
  assertRelClose(l1.factors.scale, geo, 1e-14);
  assertRelClose(l1.alpha, geo * 7, 1e-14);
  assertEquals([l1.factors.up.dtype, l1.factors.down.dtype], ["F64", "F64"]);
  assertEquals([l1.upShape, l1.inShape], [[6, 7], [5]]);

  // The sign sits on the up factor: B's down rows are √(c_B/c)·A_B, its up columns −√(c_B/c)·B_B.
  const f = Math.sqrt(cB / geo);
  const bDown = decodeFloats(find(b, "L1").factors.down.bytes, "F32", Float64Array);
  const bUp = decodeFloats(find(b, "L1").factors.up.bytes, "F32", Float64Array);
  const down = decodeFloats(l1.factors.down.bytes, "F64", Float64Array);
  const up = decodeFloats(l1.factors.up.bytes, "F64", Float64Array);
  assertRelClose(down[4 * 5 + 0], f * bDown[0], 1e-14);
  assertRelClose(up[0 * 7 + 4], -f * bUp[0], 1e-14);

  // L2: only A has it.
  assertMatrixClose(delta(l2), delta(find(a, "L2"), 0.7), 1e-12, "L2");
  assertEquals([l2.factors.rank, l2.factors.scale], [2, 0.7 * 1 / 2]);

  // L3 (conv): A's alpha 1, B's missing alpha = rank 4.
  assertMatrixClose(
    delta(l3),
    sum(delta(find(a, "L3"), 0.7), delta(find(b, "L3"), -0.3)),
    1e-12,
    "L3",
  );
  assertEquals([l3.inShape, l3.upShape, l3.factors.inFlat], [[3, 3, 3], [4, 6, 1, 1], 27]);
  assertEquals(l3.tensors.map((t) => [t.name, t.dtype, t.shape]), [
    ["L3.alpha", "F64", []],
    ["L3.lora_down.weight", "F64", [6, 3, 3, 3]],
    ["L3.lora_up.weight", "F64", [4, 6, 1, 1]],
  ]);
  assertEquals(decodeFloats(l3.tensors[0].bytes, "F64", Float64Array)[0], l3.alpha);

  assertEquals(c.layers.length, 2);
  assertEquals(merged.name, "alpha(0.70)+beta(-0.30)+gamma(0.00)");
  assertEquals([merged.entry, merged.paths, merged.folder], [spec, [A, B, C], TMP]);
  assertEquals(merged.metadata, { ss_network_dim: "4", origin: "a" });
});

Deno.test("merge: pass-through is the union, the first member's tensor wins a clash", async () => {
  const merged = await loadLora(`${A}:0.7,${B}`);
  const a = await readLoraFile(A);
  assertEquals(merged.passThrough.map((t) => t.name), ["emb", "other.x"]);
  assertEquals(merged.passThrough[0].bytes, a.passThrough[0].bytes);
  assertEquals(merged.passThroughSummary, {
    total: 2,
    byKind: { other: 2 },
    clashes: 1, // B's emb
    unweighted: 1, // A's emb (weight 0.7) is copied as is; B's weight is 1
  });
});

Deno.test("merge: a single weighted member; F32 factors on request", async () => {
  const a = await readLoraFile(A);
  const half = await loadLora(`${A}:-0.5`);
  assertEquals(half.name, "alpha(-0.50)");
  assertEquals(half.layers.map((l) => l.factors.rank), a.layers.map((l) => l.factors.rank));
  for (const [i, l] of half.layers.entries()) {
    assertMatrixClose(delta(l), delta(a.layers[i], -0.5), 1e-12, l.name);
    assertEquals(l.factors.scale, 0.5 * a.layers[i].factors.scale);
  }
  const f32 = await loadLora(`${A}:0.7,${B}:0.2`, { mergePrecision: "F32" });
  const f64 = await loadLora(`${A}:0.7,${B}:0.2`);
  assertEquals(f32.layers[0].factors.up.dtype, "F32");
  assertMatrixClose(delta(f32.layers[0]), delta(f64.layers[0]), 1e-6, "F32 vs F64");
});

Deno.test("merge errors: DoRA, disagreeing shapes, a layer that is not a LoRA in another member", async () => {
  const dora = await write("dora.safetensors", [
    ...layer("L1", { out: 6, r: 2, in: 5, alpha: 1 }, 31),
    tensor("L1.dora_scale", "F16", [6, 1], 33),
  ]);
  const e = await assertRejects(() => loadLora(`${A},${dora}`), LoraError, {
    file: dora,
    key: "L1",
  });
  assert(e.message.endsWith("has a dora_scale; DoRA layers cannot be merged"), e.message);
  await assertRejects(() => loadLora(`${dora}:0.5`), LoraError, { file: dora, key: "L1" });

  const wide = await write("wide.safetensors", layer("L1", { out: 6, r: 2, in: 9, alpha: 1 }, 35));
  await assertRejects(
    () => loadLora(`${A},${wide}`),
    LoraError,
    /layer 'L1' is out 6 × in \[5\] in .*alpha_a-v1\.safetensors but out 6 × in \[9\] in .*wide\.safetensors/,
  );

  const tucker = await write("tucker.safetensors", [
    ...layer("L1", { out: 6, r: 2, in: 5, alpha: 1 }, 41),
    ...layer("L2", { out: 3, r: 2, in: 7, alpha: 1 }, 37),
    tensor("L2.lora_mid.weight", "F16", [2, 2], 39),
  ]);
  await assertRejects(() => loadLora(`${A},${tucker}`), LoraError, {
    file: tucker,
    tensor: "L2.alpha", // the first of its tensors in name order
    key: "L2",
  });
  await assertRejects(() => mergeLoras([]), LoraError, /at least one member/);
});
