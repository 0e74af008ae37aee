/**
 * kohya's rules on other architectures, at real layer widths (unit level:
 * file → layers → backend decomposition → kohya selection; no pairing).
 * A synthetic LoRA with SD1.5 layers (attention, a 3×3 LoCon conv, a 1×1
 * conv, a layer without alpha, an all-zero layer) and Flux layers (`img_in`
 * 3072 × 64 at rank 128 > min(out, in), a double-block qkv, a single-block
 * linear1). Each layer's rank must equal kohya's rule — written out again
 * below from kohya-ss/sd-scripts `networks/resize_lora.py` at commit
 * 48d368fa557731ad0488c07304dfeba8c07910eb — applied to reference σ: a dense
 * SVD in this file (ΔW formed densely, Jacobi on its Gram matrix) where ΔW
 * fits in memory, and the constructed spectrum of the two Flux layers too
 * big for that.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";
import { loadLora } from "../src/lora/lora_file.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import { decodeFloats, encodeFloats } from "../src/safetensors/dtype.ts";
import { type KohyaRule, selectKohya } from "../src/recipe/kohya.ts";
import { kohyaLayerOf } from "../src/recipe/kohya_layers.ts";
import { kohyaReference } from "./kohya_reference.ts";
import { rng } from "./rng.ts";
import { kohyaLayerTensors } from "./lora_tensors.ts";

interface LayerSpec {
  name: string;
  out: number;
  /** The down weight's trailing dims: `[in]` or `[in, kh, kw]`. */
  inShape: number[];
  rank: number;
  alpha?: number;
  /** How up and down are made. */
  make: "random" | "zero" | "spectrum";
  /** Singular values of up·down (spectrum layers). */
  s?: number[];
}

const LAYERS: LayerSpec[] = [
  // SD1.5 (kohya names).
  {
    name: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    out: 320,
    inShape: [768],
    rank: 16,
    alpha: 8,
    make: "random",
  },
  {
    name: "lora_unet_down_blocks_0_resnets_0_conv1",
    out: 320,
    inShape: [320, 3, 3],
    rank: 8,
    alpha: 4,
    make: "random",
  },
  {
    name: "lora_unet_down_blocks_0_attentions_0_proj_in",
    out: 320,
    inShape: [320, 1, 1],
    rank: 16,
    alpha: 16,
    make: "random",
  },
  {
    name: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    out: 320,
    inShape: [320],
    rank: 16,
    make: "random", // no alpha: kohya's scale 1, alpha = the new rank
  },
  {
    name: "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_v",
    out: 320,
    inShape: [320],
    rank: 16,
    alpha: 8,
    make: "zero",
  },
  // Flux: the image input projection is 64 wide, below the rank.
  { name: "lora_unet_img_in", out: 3072, inShape: [64], rank: 128, alpha: 64, make: "random" },
  {
    name: "lora_unet_double_blocks_0_img_attn_qkv",
    out: 9216,
    inShape: [3072],
    rank: 32,
    alpha: 32,
    make: "spectrum",
    s: Array.from({ length: 32 }, (_, i) => 2 ** (-i / 3)),
  },
  {
    name: "lora_unet_single_blocks_0_linear1",
    out: 21504,
    inShape: [3072],
    rank: 32,
    alpha: 16,
    make: "spectrum",
    s: Array.from({ length: 32 }, (_, i) => (i < 4 ? 4 - i : 1 / (i + 1))),
  },
];

const RULES: KohyaRule[] = [
  { method: "sv_fro", param: 0.9, rank: 64, convRank: 4 },
  { method: "sv_ratio", param: 6, rank: 128 },
  { method: "sv_cumulative", param: 0.8 },
  { rank: 24, convRank: 4 },
  { rank: 200 },
];

/** Columns with orthonormal directions (modified Gram–Schmidt, twice), rows × k, row-major. */
function orthonormalColumns(rows: number, k: number, next: () => number): Float64Array {
  const q = Float64Array.from({ length: rows * k }, next);
  for (let pass = 0; pass < 2; pass++) {
    for (let j = 0; j < k; j++) {
      for (let p = 0; p < j; p++) {
        let dot = 0;
        for (let i = 0; i < rows; i++) dot += q[i * k + j] * q[i * k + p];
        for (let i = 0; i < rows; i++) q[i * k + j] -= dot * q[i * k + p];
      }
      let norm = 0;
      for (let i = 0; i < rows; i++) norm += q[i * k + j] ** 2;
      for (let i = 0; i < rows; i++) q[i * k + j] /= Math.sqrt(norm);
    }
  }
  return q;
}

/** up (out × r) and down (r × in′) of a layer, as stored (F32). */
function factors(spec: LayerSpec, next: () => number): { up: Float64Array; down: Float64Array } {
  const inFlat = spec.inShape.reduce((a, b) => a * b, 1);
  const { out, rank: r } = spec;
  if (spec.make === "zero") {
    return { up: new Float64Array(out * r), down: new Float64Array(r * inFlat).map(next) };
  }
  if (spec.make === "random") {
    // A decaying spectrum: column j of up scaled by 0.7^j.
    const up = Float64Array.from({ length: out * r }, (_, i) => next() * 0.7 ** (i % r));
    return { up, down: Float64Array.from({ length: r * inFlat }, next) };
  }
  const u = orthonormalColumns(out, r, next), v = orthonormalColumns(inFlat, r, next);
  const up = u.map((x, i) => x * spec.s![i % r]);
  const down = new Float64Array(r * inFlat);
  for (let i = 0; i < inFlat; i++) for (let j = 0; j < r; j++) down[j * inFlat + i] = v[i * r + j];
  return { up, down };
}

const f32 = (x: Float64Array) => decodeFloats(encodeFloats(x, "F32"), "F32", Float64Array);

/** Eigenvalues of a symmetric n × n matrix (cyclic Jacobi), descending. */
function jacobiEigenvalues(a: Float64Array, n: number): number[] {
  let trace = 0;
  for (let i = 0; i < n; i++) trace += a[i * n + i];
  // Off-diagonal elements below 1e-15 of the trace change no eigenvalue that matters here.
  const tiny = 1e-15 * trace;
  for (let sweep = 0; sweep < 50; sweep++) {
    let rotated = false;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (!(Math.abs(apq) > tiny)) continue;
        rotated = true;
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
      }
    }
    if (!rotated) break;
  }
  return Array.from({ length: n }, (_, i) => a[i * n + i]).sort((x, y) => y - x);
}

/** All min(out, in′) singular values of the dense ΔW = scale·up·down, descending. */
function denseSingularValues(
  up: Float64Array,
  down: Float64Array,
  out: number,
  inFlat: number,
  scale: number,
) {
  const r = up.length / out;
  const dw = new Float64Array(out * inFlat);
  for (let i = 0; i < out; i++) {
    for (let k = 0; k < r; k++) {
      const u = scale * up[i * r + k];
      for (let j = 0; j < inFlat; j++) dw[i * inFlat + j] += u * down[k * inFlat + j];
    }
  }
  // The Gram matrix of the smaller side: its eigenvalues are σ².
  const wide = inFlat >= out, n = Math.min(out, inFlat), m = Math.max(out, inFlat);
  const at = (i: number, k: number) => (wide ? dw[i * inFlat + k] : dw[k * inFlat + i]);
  const gram = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      let sum = 0;
      for (let k = 0; k < m; k++) sum += at(i, k) * at(j, k);
      gram[i * n + j] = gram[j * n + i] = sum;
    }
  }
  return jacobiEigenvalues(gram, n).map((e) => Math.sqrt(Math.max(e, 0)));
}

Deno.test("kohya's rules on SD1.5 and Flux layers at real widths equal the rule on a dense SVD's σ", async () => {
  const next = rng(2026);
  const dir = await Deno.makeTempDir({ prefix: "resize-lora-kohya-arch-" });
  await using backend = await createCpuBackend({ workers: 1 });
  try {
    const tensors = [];
    const reference = new Map<string, number[]>();
    for (const spec of LAYERS) {
      const { up: up64, down: down64 } = factors(spec, next);
      const [up, down] = [f32(up64), f32(down64)];
      const inFlat = spec.inShape.reduce((a, b) => a * b, 1);
      const scale = (spec.alpha ?? spec.rank) / spec.rank;
      const n = Math.min(spec.out, inFlat);
      reference.set(
        spec.name,
        spec.make === "zero"
          ? new Array(n).fill(0)
          : spec.make === "spectrum"
          ? [...spec.s!.map((s) => s * scale), ...new Array(n - spec.rank).fill(0)]
          : denseSingularValues(up, down, spec.out, inFlat, scale),
      );
      tensors.push(...kohyaLayerTensors(spec.name, { ...spec, up, down }));
    }
    const path = join(dir, "sd15_flux.safetensors");
    await writeSafetensors(path, tensors);
    const model = await loadLora(path);
    // Layers are known by their canonical names; `key` is the name as this file spells it.
    assertEquals(model.layers.map((l) => l.key).sort(), LAYERS.map((l) => l.name).sort());
    const decompositions = await backend.decompose(model.layers.map((l) => l.factors));
    const kohyaLayers = model.layers.map((l, i) => kohyaLayerOf(l, decompositions[i].sigma));

    // The dense σ and the backend's agree where the layer has them.
    model.layers.forEach((l, i) => {
      const want = reference.get(l.key)!, got = decompositions[i].sigma;
      got.forEach((s, j) => assert(Math.abs(s - want[j]) <= 1e-5 * want[0], `${l.name} σ${j}`));
    });

    for (const rule of RULES) {
      const selection = selectKohya(kohyaLayers, rule);
      model.layers.forEach((layer, i) => {
        const conv = layer.inShape.length === 3;
        const want = kohyaReference(reference.get(layer.key)!, layer.factors.scale, conv, rule);
        const what = `${layer.name}, ${JSON.stringify(rule)}`;
        assertEquals(selection.ranks[i], want, what);
        assertEquals(
          selection.keep[i].length,
          Math.min(want, decompositions[i].sigma.length),
          what,
        );
        // The layer without alpha gets kohya's scale 1: alpha = rank.
        if (!layer.tensors.some((t) => t.name.endsWith(".alpha"))) {
          assertEquals(selection.alphas[i], want, what);
        }
      });
    }
    // The facts the cases above are meant to cover.
    const byName = (name: string) => kohyaLayers[model.layers.findIndex((l) => l.key === name)];
    assert(byName("lora_unet_img_in").storedRank > 64, "a rank above min(out, in)");
    assertEquals(selectKohya([byName("lora_unet_img_in")], { rank: 200 }).ranks, [64]);
    const zero = "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_v";
    assertEquals(selectKohya([byName(zero)], { method: "sv_fro", param: 0.5 }).ranks, [1]);
    assertEquals(selectKohya([byName("lora_unet_down_blocks_0_resnets_0_conv1")], RULES[3]).ranks, [
      4,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
