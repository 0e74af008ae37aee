/**
 * Reading LoHa and LoKr layers: kinds, ranks, scales (ComfyUI's rules, as read in
 * comfyanonymous/ComfyUI `comfy/weight_adapter/loha.py` at
 * 183b377588102d00131247aec399f8b34e1122b4 and `comfy/weight_adapter/lokr.py` at
 * e8f3bc5ab766ba0149ac8ba8f67c328f8bb3da7d), Tucker pass-through, and a one-line
 * error naming the tensor for each kind of bad input.
 */

import { LoraError } from "../src/errors.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { combineKronecker, decomposeKronecker } from "../src/linalg/kronecker.ts";
import { checkKroneckerShape, type LokrLayer, readLycorisLayers } from "../src/lora/lycoris.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";
import {
  lohaTensors,
  lokrTensors,
  type LycorisLayerShape,
  writeSyntheticLoha,
  writeSyntheticLokr,
} from "../src/testing/synthetic_lycoris.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";

const LINEAR: LycorisLayerShape = { name: "lora_unet_a", out: 24, in: 20, kernel: 0 };
const CONV: LycorisLayerShape = { name: "lora_unet_b", out: 16, in: 8, kernel: 3 };

/** Writes tensors to a temporary file, runs `body` on it, removes it. */
async function withFile<T>(
  tensors: readonly TensorSource[],
  body: (path: string) => Promise<T>,
): Promise<T> {
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await writeSafetensors(path, tensors);
    return await body(path);
  } finally {
    await Deno.remove(path);
  }
}

async function layersOf(path: string) {
  await using file = await SafetensorsFile.open(path);
  return await readLycorisLayers(file);
}

/** Replaces one tensor (by name) with a new shape and values. */
function replaced(
  tensors: readonly TensorSource[],
  name: string,
  shape: number[],
  values?: number[],
): TensorSource[] {
  return tensors.map((t) =>
    t.name !== name ? t : {
      name,
      dtype: t.dtype,
      shape,
      data: encodeFloats(values ?? new Array(shape.reduce((a, b) => a * b, 1)).fill(0.5), "F16"),
    }
  );
}

/** Asserts a one-line LoraError whose message names `path` and matches `pattern`. */
async function assertOneLine(fn: () => unknown, path: string, pattern: RegExp): Promise<void> {
  const e = await assertRejects(fn, LoraError, pattern);
  assert(e.message.startsWith(`${path}: `), e.message);
  assert(!e.message.includes("\n"), e.message);
}

Deno.test("a file mixing LoRA, LoHa and LoKr layers yields each LyCORIS layer once, with its kind, exact rank and own tensors", async () => {
  const lora: TensorSource[] = [
    {
      name: "lora_unet_c.lora_down.weight",
      dtype: "F16",
      shape: [2, 20],
      data: new Uint8Array(80),
    },
    { name: "lora_unet_c.lora_up.weight", dtype: "F16", shape: [24, 2], data: new Uint8Array(96) },
  ];
  const tensors = [
    ...lohaTensors(LINEAR, { rank: 3 }),
    ...lokrTensors(CONV, { factor: 4, w2: "decomposed", rank: 2 }),
    ...lora,
  ];
  await withFile(tensors, async (path) => {
    const { layers, tucker } = await layersOf(path);
    assertEquals(tucker, []);
    assertEquals(layers.map((l) => [l.name, l.kind, l.rank, l.out, l.inFlat]), [
      ["lora_unet_a", "loha", 9, 24, 20],
      // w1 full 4×4 (rank ≤ 4) ⊗ w2 = [4×2]·[2×18]: ΔW 16×72, rank ≤ 4·2.
      ["lora_unet_b", "lokr", 8, 16, 72],
    ]);
    assertEquals(layers[0].tensors, [
      "lora_unet_a.alpha",
      "lora_unet_a.hada_w1_a",
      "lora_unet_a.hada_w1_b",
      "lora_unet_a.hada_w2_a",
      "lora_unet_a.hada_w2_b",
    ]);
    assertEquals(layers[1].tensors, [
      "lora_unet_b.alpha",
      "lora_unet_b.lokr_w1",
      "lora_unet_b.lokr_w2_a",
      "lora_unet_b.lokr_w2_b",
    ]);
  });
});

Deno.test("LoHa scale is α over the rows of hada_w1_b (1 without α), and r1·r2 above min(out, in) takes the dense route", async () => {
  const tensors = [
    ...lohaTensors(LINEAR, { rank: 4, alpha: 2 }),
    ...lohaTensors(CONV, { rank: 2, alpha: null }),
    ...lohaTensors({ ...LINEAR, name: "lora_unet_c" }, { rank: 5, alpha: 10 }),
  ];
  await withFile(tensors, async (path) => {
    const { layers } = await layersOf(path);
    const loha = layers.map((l) => {
      assert(l.kind === "loha");
      return [l.name, l.factors.scale, l.route, l.rank, l.factors.rank];
    });
    assertEquals(loha, [
      ["lora_unet_a", 0.5, "khatri-rao", 16, 16],
      ["lora_unet_b", 1, "khatri-rao", 4, 4],
      // 25 > min(24, 20): ΔW (24×20) times the 20×20 identity.
      ["lora_unet_c", 2, "dense", 25, 20],
    ]);
  });
});

Deno.test("LoKr scale is α over the decomposed factor's rank (w2's when both are), else 1", async () => {
  const shape = (name: string) => ({ ...LINEAR, name });
  const tensors = [
    ...lokrTensors(shape("lora_full_full"), { factor: 4, alpha: 5 }),
    ...lokrTensors(shape("lora_w1_only"), { factor: 4, w1: "decomposed", w1Rank: 2, alpha: 5 }),
    ...lokrTensors(shape("lora_w2_only"), { factor: 4, w2: "decomposed", rank: 4, alpha: 5 }),
    ...lokrTensors(shape("lora_both"), {
      factor: 4,
      w1: "decomposed",
      w2: "decomposed",
      w1Rank: 2,
      rank: 4,
      alpha: 5,
    }),
    ...lokrTensors(shape("lora_no_alpha"), { factor: 4, w2: "decomposed", alpha: null }),
  ];
  await withFile(tensors, async (path) => {
    const { layers } = await layersOf(path);
    const scales = Object.fromEntries(layers.map((l) => [l.name, (l as LokrLayer).scale]));
    assertEquals(scales, {
      lora_both: 5 / 4,
      lora_full_full: 1,
      lora_no_alpha: 1,
      lora_w1_only: 5 / 2,
      lora_w2_only: 5 / 4,
    });
  });
});

Deno.test("a full 4-D lokr_w2 gives the layer its kernel, and the base weight's shape is checked against the Kronecker product", async () => {
  await withFile(lokrTensors(CONV, { factor: 4 }), async (path) => {
    const [layer] = (await layersOf(path)).layers as LokrLayer[];
    assertEquals(layer.inShape, [8, 3, 3]);
    assertEquals(layer.factorShapes, [[4, 4], [4, 18]]);
    checkKroneckerShape(path, layer, [16, 8, 3, 3]);
    const e = assertThrowsLora(() => checkKroneckerShape(path, layer, [16, 8, 1, 1]));
    assertEquals(
      e.message,
      `${path}: layer 'lora_unet_b': Kronecker product 4×4 ⊗ 4×18 is 16×8×3×3, but the base weight is 16×8×1×1`,
    );
    assertThrowsLora(() => checkKroneckerShape(path, layer, [32, 8, 3, 3]));
  });
  await withFile(lokrTensors(LINEAR, { factor: 4, w2: "decomposed" }), async (path) => {
    const [layer] = (await layersOf(path)).layers as LokrLayer[];
    assertEquals(layer.inShape, undefined);
    checkKroneckerShape(path, layer, [24, 20]);
    const e = assertThrowsLora(() => checkKroneckerShape(path, layer, [24, 24]));
    assert(e.message.includes("is 24×20, but the base weight is 24×24"), e.message);
  });
});

function assertThrowsLora(fn: () => void): Error {
  try {
    fn();
  } catch (e) {
    assert(e instanceof LoraError, String(e));
    assert(!e.message.includes("\n"));
    return e;
  }
  throw new Error("expected a LoraError");
}

Deno.test("Tucker layers (hada_t1/t2, lokr_t2) are left as pass-through", async () => {
  const tucker: TensorSource[] = [
    ...lohaTensors({ ...CONV, name: "lora_unet_t" }, { rank: 2 }),
    { name: "lora_unet_t.hada_t1", dtype: "F16", shape: [2, 2, 3, 3], data: new Uint8Array(72) },
    { name: "lora_unet_t.hada_t2", dtype: "F16", shape: [2, 2, 3, 3], data: new Uint8Array(72) },
    ...lokrTensors({ ...CONV, name: "lora_unet_u" }, { factor: 4, w2: "decomposed", rank: 2 }),
    { name: "lora_unet_u.lokr_t2", dtype: "F16", shape: [2, 2, 3, 3], data: new Uint8Array(72) },
  ];
  await withFile([...tucker, ...lohaTensors(LINEAR)], async (path) => {
    const { layers, tucker } = await layersOf(path);
    assertEquals(layers.map((l) => l.name), ["lora_unet_a"]);
    assertEquals(tucker, ["lora_unet_t", "lora_unet_u"]);
  });
});

Deno.test("a LoHa layer with a missing factor is a one-line error naming the tensor", async () => {
  const tensors = lohaTensors(LINEAR).filter((t) => !t.name.endsWith(".hada_w2_b"));
  await withFile(tensors, (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /layer 'lora_unet_a': missing factor 'lora_unet_a\.hada_w2_b'$/,
    ));
});

Deno.test("LoHa factors with mismatched Hadamard ranks are a one-line error naming the tensor", async () => {
  const base = lohaTensors(LINEAR, { rank: 2 });
  const tensors = replaced(
    replaced(base, "lora_unet_a.hada_w2_a", [24, 3]),
    "lora_unet_a.hada_w2_b",
    [3, 20],
  );
  await withFile(tensors, (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /tensor 'lora_unet_a\.hada_w2_b': Hadamard rank 3 does not match rank 2 of 'lora_unet_a\.hada_w1_b'$/,
    ));
});

Deno.test("LoHa products of different shapes, and factors that do not chain, are one-line errors naming the tensor", async () => {
  const base = lohaTensors(LINEAR, { rank: 2 });
  await withFile(replaced(base, "lora_unet_a.hada_w2_b", [2, 21]), (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /tensor 'lora_unet_a\.hada_w2_a': Hadamard product 24×21 does not match 24×20/,
    ));
  await withFile(replaced(base, "lora_unet_a.hada_w1_a", [24, 3]), (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /tensor 'lora_unet_a\.hada_w1_a' \(24×3\) does not chain with 'lora_unet_a\.hada_w1_b' \(2×20\)$/,
    ));
  await withFile(replaced(base, "lora_unet_a.hada_w1_b", [2, 4, 5]), (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /tensor 'lora_unet_a\.hada_w1_b' has shape \[2,4,5\], expected a non-empty 2-D factor$/,
    ));
});

Deno.test("LoKr layers with a missing, doubled or unchained factor are one-line errors naming the tensor", async () => {
  const base = lokrTensors(LINEAR, { factor: 4, w2: "decomposed", rank: 2 });
  await withFile(base.filter((t) => !t.name.endsWith(".lokr_w1")), (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /layer 'lora_unet_a': missing factor 'lora_unet_a\.lokr_w1' \(or 'lora_unet_a\.lokr_w1_a' and '_b'\)$/,
    ));
  await withFile(base.filter((t) => !t.name.endsWith(".lokr_w2_a")), (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /missing factor 'lora_unet_a\.lokr_w2_a'$/,
    ));
  await withFile(replaced(base, "lora_unet_a.lokr_w2_b", [3, 5]), (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /tensor 'lora_unet_a\.lokr_w2_a' \(6×2\) does not chain with 'lora_unet_a\.lokr_w2_b' \(3×5\)$/,
    ));
  const doubled: TensorSource = {
    name: "lora_unet_a.lokr_w2",
    dtype: "F16",
    shape: [6, 5],
    data: new Uint8Array(60),
  };
  await withFile([...base, doubled], (path) =>
    assertOneLine(
      () => layersOf(path),
      path,
      /'lora_unet_a\.lokr_w2' comes with 'lora_unet_a\.lokr_w2_a\/_b'; expected one or the other$/,
    ));
});

Deno.test("a NaN in a LoHa or LoKr factor fails the decomposition with a one-line error naming the tensor", async () => {
  await using backend = await createCpuBackend({ workers: 1, inlineWork: 0 });
  const nanAt = (n: number, at: number) =>
    Array.from({ length: n }, (_, i) => i === at ? NaN : 0.25);
  const loha = replaced(
    lohaTensors(LINEAR, { rank: 2 }),
    "lora_unet_a.hada_w2_b",
    [2, 20],
    nanAt(40, 27),
  );
  await withFile(loha, async (path) => {
    const { layers: [layer] } = await layersOf(path);
    assert(layer.kind === "loha");
    await assertOneLine(
      () => backend.decompose([layer.factors]),
      path,
      /tensor 'lora_unet_a\.hada_w2_b': value 27 \(row 1\) is NaN, not a finite number$/,
    );
  });
  for (const name of ["lora_unet_a.lokr_w1", "lora_unet_a.lokr_w2"]) {
    const shape = name.endsWith("w1") ? [4, 4] : [6, 5];
    const n = shape[0] * shape[1];
    const lokr = replaced(lokrTensors(LINEAR, { factor: 4 }), name, shape, nanAt(n, n - 1));
    await withFile(lokr, async (path) => {
      const { layers: [layer] } = await layersOf(path);
      assert(layer.kind === "lokr");
      await assertOneLine(
        () => decomposeKronecker(backend, [layer.kronecker]),
        path,
        new RegExp(`tensor '${name.replace(".", "\\.")}': value ${n - 1} .* is NaN`),
      );
    });
  }
});

Deno.test("Kronecker singular values are every product σ1ᵢ·σ2ⱼ times |scale|, in descending order with ties broken by (i, j)", () => {
  const d = (s: number[]) => ({
    sigma: new Float64Array(s),
    upTransform: new Float64Array(0),
    downTransform: new Float64Array(0),
  });
  // Equal products (3·2 = 2·3, 3·1 = 1·3, 2·1 = 1·2) come in (i, j) order.
  const k = combineKronecker(d([3, 2, 1]), d([3, 2, 1]), -2);
  assertEquals([...k.sigma], [18, 12, 12, 8, 6, 6, 4, 4, 2]);
  assertEquals([...k.pairs], [0, 0, 0, 1, 1, 0, 1, 1, 0, 2, 2, 0, 1, 2, 2, 1, 2, 2]);
  // Against a sort of every product: random spectra with zeros and repeated values.
  let seed = 3;
  const next = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  for (let trial = 0; trial < 20; trial++) {
    const spectrum = (n: number) =>
      Array.from({ length: n }, () => Math.round(next() * 6) / 2).sort((a, b) => b - a);
    const [s1, s2] = [spectrum(1 + trial % 7), spectrum(1 + trial % 5)];
    const want = s1.flatMap((a, i) => s2.map((b, j) => ({ v: 0.5 * a * b, i, j })))
      .sort((x, y) => y.v - x.v || x.i - y.i || x.j - y.j);
    const got = combineKronecker(d(s1), d(s2), 0.5);
    assertEquals([...got.sigma], want.map((x) => x.v));
    assertEquals([...got.pairs], want.flatMap((x) => [x.i, x.j]));
  }
  // A NaN σ (a product that overflowed) makes every product NaN, still k1·k2 of them.
  assertEquals([...combineKronecker(d([1, NaN]), d([2, 1]), 1).sigma], [NaN, NaN, NaN, NaN]);
});

Deno.test("the synthetic SDXL LoHa and LoKr cover every UNet attention and MLP linear with LyCORIS's names and shapes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeSyntheticLoha(`${dir}/loha.safetensors`, { scale: 1 / 16, rank: 4 });
    await writeSyntheticLokr(`${dir}/lokr.safetensors`, { scale: 1 / 16, factor: 8 });
    await using loha = await SafetensorsFile.open(`${dir}/loha.safetensors`);
    await using lokr = await SafetensorsFile.open(`${dir}/lokr.safetensors`);
    const a = await readLycorisLayers(loha), b = await readLycorisLayers(lokr);
    // SDXL's UNet: 70 transformer blocks × (4 attn1 + 4 attn2 + 2 ff) linears.
    assertEquals([a.layers.length, b.layers.length], [700, 700]);
    assert(a.layers.every((l) => l.kind === "loha" && l.rank === 16));
    assert(b.layers.every((l) => l.kind === "lokr"));
    assertEquals(loha.metadata["ss_network_module"], "lycoris.kohya");
    assertEquals(JSON.parse(lokr.metadata["ss_network_args"]).algo, "lokr");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
