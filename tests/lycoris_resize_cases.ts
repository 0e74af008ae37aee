/**
 * End-to-end checks of LyCORIS conversion through `resize()`, shared by the CPU test
 * (lycoris_resize_test.ts) and the WebGPU one (lycoris_resize_gpu_test.ts): a synthetic SDXL
 * base at 1/64 width and one file mixing LoRA, LoHa and LoKr layers (linear and conv; LoKr
 * factors full and decomposed, every combination), checked against dense ΔW computed here in
 * f64 (lycoris_cases.ts: the ComfyUI weight-adapter rules) and their dense SVDs.
 *
 * What ComfyUI loads: comfyanonymous/ComfyUI `comfy/lora.py` at
 * 00728eb20fce05955f89ef1ccf5f6167416e94cf maps `lora_unet_<key>` for every UNet state-dict key
 * `diffusion_model.<key>.weight` (dots → underscores) in `model_lora_keys_unet`, and `load_lora`
 * reads `<name>.lora_up.weight`, `<name>.lora_down.weight` and `<name>.alpha`, flattening both
 * factors to 2-D and reshaping their product to the weight's shape.
 */

import { plan, resize } from "../mod.ts";
import type { DeviceChoice } from "../src/linalg/select_backend.ts";
import { decodeFloats, encodeFloats, type FloatDType } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";
import { syntheticMatrix, writeSyntheticBase } from "../src/testing/synthetic_base.ts";
import { type LoraLayerSpec, sdxlLoraLayers } from "../src/testing/synthetic_lora.ts";
import { lohaTensors, lokrTensors } from "../src/testing/synthetic_lycoris.ts";
import { assert, assertClose, assertEquals } from "./assert.ts";
import { jacobiSingularValues } from "./jacobi_svd.ts";
import {
  type Dense,
  denseLoha,
  denseLokr,
  distance,
  frobenius,
  matrixOf,
  product,
  type Tensors,
  tensorsOf,
} from "./lycoris_cases.ts";

/** Width scale of the synthetic base and layers. */
export const SCALE = 1 / 64;

/** How one layer of the mixed file is stored. */
export type Form =
  | "lora"
  | "loha"
  | "lokr full⊗full"
  | "lokr full⊗decomposed"
  | "lokr decomposed⊗full"
  | "lokr decomposed⊗decomposed";

const FORMS: readonly Form[] = [
  "loha",
  "lokr full⊗full",
  "lokr full⊗decomposed",
  "lokr decomposed⊗full",
  "lokr decomposed⊗decomposed",
  "lora",
];

/** One layer of the mixed file. */
export interface MixedLayer {
  /** Its shape and base key. */
  readonly spec: LoraLayerSpec;
  /** How it is stored. */
  readonly form: Form;
}

/** The files of a run. */
export interface Fixture {
  /** The folder holding them. */
  readonly dir: string;
  /** The synthetic base. */
  readonly base: string;
  /** The mixed LoRA + LoHa + LoKr file. */
  readonly mixed: string;
  /** Its layers, in name order. */
  readonly layers: readonly MixedLayer[];
  /** Its tensors, decoded (f64). */
  readonly tensors: Tensors;
}

/** A LoRA layer's tensors (rank 4, α 2), as kohya writes them. */
function loraTensors(l: LoraLayerSpec): TensorSource[] {
  const r = 4, inFlat = l.in * (l.kernel || 1) ** 2;
  const m = (name: string, rows: number, cols: number, shape: number[], gain = 1) => ({
    name,
    dtype: "F16" as const,
    shape,
    data: encodeFloats(syntheticMatrix(rows, cols, { seed: 5, name, gain }), "F16"),
  });
  const k = l.kernel ? [l.kernel, l.kernel] : [];
  return [
    { name: `${l.name}.alpha`, dtype: "F16", shape: [], data: encodeFloats([2], "F16") },
    m(`${l.name}.lora_down.weight`, r, inFlat, [r, l.in, ...k]),
    m(`${l.name}.lora_up.weight`, l.out, r, [l.out, r, ...(l.kernel ? [1, 1] : [])], 0.3),
  ];
}

/** The tensors of one layer in `form`. */
export function formTensors(spec: LoraLayerSpec, form: Form): TensorSource[] {
  if (form === "lora") return loraTensors(spec);
  if (form === "loha") return lohaTensors(spec, { rank: 3, alpha: 2 });
  const [w1, w2] = form.slice(5).split("⊗") as ["full" | "decomposed", "full" | "decomposed"];
  // Different ranks tell which one the scale divides by.
  return lokrTensors(spec, { factor: 4, w1, w2, rank: 2, w1Rank: 3, alpha: 3 });
}

/**
 * Writes the base and the mixed file: some of the UNet attention, MLP, 3×3 conv and 1×1 skip
 * layers, each form in turn.
 */
export async function writeFixture(dir: string): Promise<Fixture> {
  const base = `${dir}/base.safetensors`, mixed = `${dir}/mixed.safetensors`;
  await writeSyntheticBase(base, { scale: SCALE });
  const specs = sdxlLoraLayers({
    scale: SCALE,
    include: ["unet_attn", "unet_ff", "unet_conv3", "unet_res_skip"],
  });
  // Each form in turn among the linear layers, and again among the conv ones.
  const turn = [0, 0, 0, 0];
  const layers = specs
    .filter((spec, i) => i % 11 === 0 || (spec.kernel > 0 && i % 3 === 0))
    .map((spec) => ({ spec, form: FORMS[turn[spec.kernel]++ % FORMS.length] }));
  await writeSafetensors(mixed, layers.flatMap((l) => formTensors(l.spec, l.form)), {
    metadata: {
      ss_network_module: "lycoris.kohya",
      ss_network_args: JSON.stringify({ algo: "lokr", factor: "4" }),
      ss_output_name: "mixed",
    },
  });
  layers.sort((a, b) => a.spec.name < b.spec.name ? -1 : 1);
  return { dir, base, mixed, layers, tensors: await tensorsOf(mixed) };
}

/** ΔW of one input layer, flattened out × in·kh·kw, in f64. */
export function inputDelta(f: Fixture, l: MixedLayer): Dense {
  const name = l.spec.name, t = f.tensors;
  if (l.form === "loha") return denseLoha(t, name);
  if (l.form !== "lora") return denseLokr(t, name, l.spec.kernel);
  const up = matrixOf(t, `${name}.lora_up.weight`), down = matrixOf(t, `${name}.lora_down.weight`);
  const scale = t.get(`${name}.alpha`)!.v[0] / down.rows;
  const p = product(up, down);
  return { ...p, v: p.v.map((x) => x * scale) };
}

/** An output layer read back: ΔW = up·down·alpha/k′ (zero when the layer is left out), k′. */
function outputDelta(out: Tensors, name: string, rows: number, cols: number) {
  const up = out.get(`${name}.lora_up.weight`);
  if (!up) return { delta: new Float64Array(rows * cols), kept: 0 };
  const down = matrixOf(out, `${name}.lora_down.weight`);
  const p = product(matrixOf(out, `${name}.lora_up.weight`), down);
  const scale = out.get(`${name}.alpha`)!.v[0] / down.rows;
  return { delta: p.v.map((x) => x * scale), kept: down.rows };
}

const common = (f: Fixture, device: DeviceChoice) => ({
  checkpoint: f.base,
  loras: [f.mixed],
  device,
  normsCache: false as const,
});

/**
 * Every nonzero dimension kept: each output layer's ΔW is the input's within F16 rounding, and
 * the file holds nothing but LoRA layers that ComfyUI's loader maps and reads, with the
 * LyCORIS metadata kept and the conversion recorded.
 */
export async function checkKeepEverything(f: Fixture, device: DeviceChoice): Promise<void> {
  const outputFolder = `${f.dir}/all_${device}`;
  const { outputs: [o] } = await resize({
    ...common(f, device),
    recipes: "fro_lora=1,thr=-30",
    outputFolder,
  });
  const out = await tensorsOf(o.path);
  await using file = await SafetensorsFile.open(o.path);
  await using baseFile = await SafetensorsFile.open(f.base);
  // ComfyUI's UNet key map, as model_lora_keys_unet builds it from the base's keys.
  const comfyKeys = new Map<string, string>();
  for (const t of baseFile.tensors) {
    const m = /^model\.(diffusion_model\.(.+))\.weight$/.exec(t.name);
    if (m) comfyKeys.set(`lora_unet_${m[2].replaceAll(".", "_")}`, t.name);
  }
  for (const t of file.tensors) {
    const m = /^(.+)\.(alpha|lora_up\.weight|lora_down\.weight)$/.exec(t.name);
    assert(m !== null, `'${t.name}' is not a tensor ComfyUI's load_lora reads`);
    assert(comfyKeys.has(m[1]), `'${m[1]}' is not a name ComfyUI's key map has`);
  }
  assertEquals(file.tensors.length, 3 * f.layers.length);

  for (const l of f.layers) {
    const name = l.spec.name;
    const dense = inputDelta(f, l);
    const { delta, kept } = outputDelta(out, name, dense.rows, dense.cols);
    const error = distance(delta, dense.v) / frobenius(dense.v);
    assert(error < 1.5e-3, `${name} (${l.form}): output ΔW off by ${error} relative`);
    // The written shapes are the base weight's: [k′, in, kh, kw] down, [out, k′, 1, 1] up.
    const weight = baseFile.tensors.find((t) => t.name === comfyKeys.get(name))!;
    assertEquals(out.get(`${name}.lora_down.weight`)!.shape, [kept, ...weight.shape.slice(1)]);
    assertEquals(out.get(`${name}.lora_up.weight`)!.shape, [
      weight.shape[0],
      kept,
      ...weight.shape.slice(2).map(() => 1),
    ]);
  }

  const loha = f.layers.filter((l) => l.form === "loha").length;
  const lokr = f.layers.filter((l) => l.form.startsWith("lokr")).length;
  assertEquals(file.metadata.ss_network_module, "networks.lora");
  assertEquals(file.metadata.ss_network_args, JSON.stringify({ algo: "lokr", factor: "4" }));
  // One more key of the resize_params object, written as Python's json.dumps writes ints.
  assert(
    file.metadata.resize_params.endsWith(
      `, "converted_to_lora": {"loha_layers": ${loha}, "lokr_layers": ${lokr}, "network_module": "lycoris.kohya"}}`,
    ),
    file.metadata.resize_params,
  );
}

/**
 * With a size target, each layer's relative error is the Eckart–Young optimum at the rank it
 * keeps: √(Σ_{i≥k} σᵢ²)/‖ΔW‖ from a dense SVD of its ΔW.
 */
export async function checkOptimalTruncation(f: Fixture, device: DeviceChoice): Promise<void> {
  const everything = await plan({
    ...common(f, device),
    recipes: "fro_ckpt=1,thr=-30",
    outputDtype: "F32",
  });
  const target = everything.outputs[0].bytes / 2 ** 20 / 2;
  const outputFolder = `${f.dir}/size_${device}`;
  const { outputs: [o] } = await resize({
    ...common(f, device),
    recipes: `fro_ckpt=1,size=${target.toFixed(4)}`,
    outputDtype: "F32",
    outputFolder,
  });
  assert(o.rankAfter < o.rankBefore && o.rankAfter > 0, `${o.rankAfter} of ${o.rankBefore}`);
  const out = await tensorsOf(o.path);
  let truncated = 0;
  for (const l of f.layers) {
    const dense = inputDelta(f, l);
    const norm = frobenius(dense.v);
    const sigma = jacobiSingularValues(dense.v, dense.rows, dense.cols);
    const { delta, kept } = outputDelta(out, l.spec.name, dense.rows, dense.cols);
    const optimum = frobenius(sigma.subarray(kept)) / norm;
    const error = distance(delta, dense.v) / norm;
    // F32 factors: ~1e-7 relative; the optimum itself is exact in f64.
    assertClose(error, optimum, 2e-5, `${l.spec.name} (${l.form}) at k′ = ${kept}`);
    if (optimum > 1e-3) truncated++;
  }
  assert(truncated > f.layers.length / 4, `only ${truncated} layers truncated`);
}

/**
 * Subspace scores, for every kind of layer, are |uₜᵀ·W·vₜ| of the dimension's singular vectors,
 * taken here from the written output (up column x and down row y of a kept dimension:
 * |xᵀ·W·y| / (‖x‖·‖y‖)) and the base weight read here.
 */
export async function checkSubspace(f: Fixture, device: DeviceChoice): Promise<void> {
  const { outputs: [o] } = await resize({
    ...common(f, device),
    recipes: "subspace=1,thr=-30",
    outputDtype: "F32",
    outputFolder: `${f.dir}/subspace_${device}`,
  });
  const out = await tensorsOf(o.path);
  await using baseFile = await SafetensorsFile.open(f.base);
  const kinds = new Set<string>();
  for (const [i, l] of f.layers.entries()) {
    const summary = o.layers[i];
    assertEquals(summary.name, l.spec.name);
    const key = `model.diffusion_model.${
      baseFile.tensors.map((t) => t.name).find((n) =>
        `lora_unet_${
          n.slice("model.diffusion_model.".length, -".weight".length).replaceAll(".", "_")
        }` ===
          l.spec.name
      )!.slice("model.diffusion_model.".length)
    }`;
    const info = baseFile.tensors.find((t) => t.name === key)!;
    const w = decodeFloats(await baseFile.readBytes(key), info.dtype as FloatDType, Float64Array);
    const up = matrixOf(out, `${l.spec.name}.lora_up.weight`);
    const down = matrixOf(out, `${l.spec.name}.lora_down.weight`);
    const rows = up.rows, cols = down.cols, k = down.rows;
    assertEquals(k, summary.kept);
    summary.keep.forEach((t, j) => {
      let xWy = 0, xx = 0, yy = 0;
      for (let c = 0; c < cols; c++) yy += down.v[j * cols + c] ** 2;
      for (let r = 0; r < rows; r++) {
        const x = up.v[r * k + j];
        xx += x * x;
        let wy = 0;
        for (let c = 0; c < cols; c++) wy += w[r * cols + c] * down.v[j * cols + c];
        xWy += x * wy;
      }
      const expected = Math.abs(xWy) / Math.sqrt(xx * yy);
      const scale = summary.sigma[t] * 10 ** -summary.scores[t];
      assertClose(scale, expected, 1e-4, `${l.spec.name} (${l.form}) dimension ${t}`);
    });
    kinds.add(l.form);
  }
  assertEquals(kinds.size, 6);
}
