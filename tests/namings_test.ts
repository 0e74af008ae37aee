/**
 * Namings: the block mapping against diffusers' conversion, round trips, the
 * names ComfyUI maps, and one LoRA written in every naming (by the converter
 * in naming_converter.ts, independent of the reader) reading and planning the
 * same as its kohya twin.
 */

import { join } from "node:path";
import { assert, assertClose, assertEquals, assertRelClose } from "./assert.ts";
import {
  diffusersUnetPath,
  keysIn,
  sdxlTestLayers,
  storesAlpha,
  TEST_NAMINGS,
  type TestNaming,
  writeInNaming,
} from "./naming_converter.ts";
import { loraNamesForBaseKey } from "../src/base/key_map.ts";
import { type LoraModel, readLoraFile } from "../src/lora/lora_file.ts";
import { plan } from "../src/resize.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { decodeFloats } from "../src/safetensors/dtype.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { writeSafetensors } from "../src/safetensors/writer.ts";
import {
  diffusersFromSgm,
  NAMINGS,
  OUTPUT_NAMINGS,
  outputKeys,
  sgmFromDiffusers,
} from "../src/namings/mod.ts";
import { dotted } from "../src/namings/dotted.ts";
import { comfyKeyMap, comfyModelKey } from "./comfy_key_map.ts";
import { sd15BaseSpecs } from "../src/testing/synthetic_sd15.ts";

const BASE = "tests/fixtures/micro_sdxl_base.safetensors";
const TMP = await Deno.makeTempDir({ prefix: "namings_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

const sdxlTensors = (JSON.parse(await Deno.readTextFile("tests/fixtures/sdxl_keys.json")) as {
  tensors: Record<string, { shape: number[] }>;
}).tensors;
const UNET = "model.diffusion_model.";
const under = (s: string) => s.replaceAll(".", "_");

/** UNet weight paths (SGM, dotted, without prefix and `.weight`) of a key list. */
function unetPaths(keys: Iterable<string>): string[] {
  return [...keys].filter((k) => k.startsWith(UNET) && k.endsWith(".weight"))
    .map((k) => k.slice(UNET.length, -".weight".length));
}

function checkBlockMapping(paths: readonly string[], arch: "sdxl" | "sd15"): void {
  const seen = new Set<string>();
  for (const sgm of paths) {
    const expected = under(diffusersUnetPath(sgm));
    assertEquals(diffusersFromSgm(under(sgm), arch), expected, sgm);
    assertEquals(sgmFromDiffusers(expected, arch), under(sgm), expected);
    assert(!seen.has(expected), `two SGM weights map to ${expected}`);
    seen.add(expected);
  }
}

Deno.test("the SGM ↔ diffusers UNet block mapping agrees with diffusers' conversion for every SDXL weight", () => {
  const paths = unetPaths(Object.keys(sdxlTensors));
  assertEquals(paths.length, 1050);
  checkBlockMapping(paths, "sdxl");
  // The block that differs between the architectures: SDXL's first up level has attention.
  assertEquals(sgmFromDiffusers("up_blocks_0_upsamplers_0_conv", "sdxl"), "output_blocks_2_2_conv");
  assertEquals(sgmFromDiffusers("up_blocks_0_upsamplers_0_conv", "sd15"), "output_blocks_2_1_conv");
});

Deno.test("the SGM ↔ diffusers UNet block mapping agrees with diffusers' conversion for every SD1.5 weight", () => {
  const names = sd15BaseSpecs().map((s) => s.name);
  // SD1.5's own UNet has 686 tensors; the synthetic set is built from the architecture.
  assertEquals(names.filter((n) => n.startsWith(UNET)).length, 686);
  const paths = unetPaths(names);
  checkBlockMapping(paths, "sd15");
  // Names of a module the architecture lacks map to nothing.
  assertEquals(sgmFromDiffusers("down_blocks_3_resnets_0_conv1", "sdxl"), undefined);
  assertEquals(sgmFromDiffusers("add_embedding_linear_1", "sd15"), undefined);
  assertEquals(sgmFromDiffusers("down_blocks_1_resnets_0_conv9", "sdxl"), undefined);
});

Deno.test("dotted paths come back from underscored ones for every SDXL weight in both spellings and CLIP's", () => {
  const clip = Object.keys(sdxlTensors)
    .filter((k) => k.startsWith("conditioner.embedders.0.transformer.") && k.endsWith(".weight"))
    .map((k) => k.slice("conditioner.embedders.0.transformer.".length, -".weight".length));
  for (const path of [...unetPaths(Object.keys(sdxlTensors)), ...clip]) {
    assertEquals(dotted(under(path)), path);
    if (!clip.includes(path)) {
      assertEquals(dotted(under(diffusersUnetPath(path))), diffusersUnetPath(path));
    }
  }
});

/** Every canonical name the SDXL key map gives a LoRA layer. */
function sdxlCanonicalNames(): string[] {
  const names: string[] = [];
  for (const [key, { shape }] of Object.entries(sdxlTensors)) {
    const n = loraNamesForBaseKey(key, shape);
    if (n?.chunks) names.push(...n.chunks);
    else if (n?.standard) names.push(n.standard);
  }
  return names;
}

Deno.test("every naming spells every canonical SDXL name it can and reads it back", () => {
  const canonical = sdxlCanonicalNames();
  assertEquals(canonical.length, 794 + 12 * 6 + 32 * 6); // UNet 2-D+ weights, CLIP-L, CLIP-G (q/k/v split)
  for (const naming of NAMINGS) {
    let spelled = 0;
    for (const name of canonical) {
      const layer = naming.fromCanonical(name, "sdxl");
      if (layer === undefined) continue;
      spelled++;
      assertEquals(naming.toCanonical(layer, "sdxl"), name, `${naming.id}: ${layer}`);
    }
    // kohya and ComfyUI spell everything; the diffusers-block namings every UNet layer (or all).
    const least: Record<string, number> = {
      "diffusers-attn-procs": 70 * 4 * 2,
      simpletuner: 794,
      "kohya-diffusers": 794,
    };
    assert(spelled >= (least[naming.id] ?? canonical.length), `${naming.id}: ${spelled}`);
    // Whether alpha is stored: as the converter writes each naming.
    assertEquals(naming.storesAlpha, storesAlpha(naming.id), naming.id);
  }
});

Deno.test("ComfyUI's key map loads every layer in kohya, kohya-diffusers, SimpleTuner and ComfyUI names", () => {
  const map = comfyKeyMap(sdxlTensors);
  const canonical = sdxlCanonicalNames();
  for (const naming of NAMINGS) {
    const missing: string[] = [];
    for (const name of canonical) {
      const layer = naming.fromCanonical(name, "sdxl");
      if (layer === undefined) continue;
      const model = map.get(layer);
      if (model === undefined) missing.push(layer);
      else assertEquals(model, comfyModelKey(name), `${naming.id}: ${layer}`);
    }
    if (
      ["kohya", "kohya-diffusers", "simpletuner", "comfyui", "diffusers-attn-procs"].includes(
        naming.id,
      )
    ) {
      assertEquals(missing, [], naming.id);
    } else {
      // PEFT and diffusers module names: ComfyUI maps the UNet's attention projections only in the
      // attention-processor spelling (`attn1.processor.to_q`), so the write stage must not offer
      // them to ComfyUI users as is; everything else loads.
      assert(
        missing.length > 0 && missing.every((k) => /\.attn[12]\.to_(q|k|v|out\.0)$/.test(k)),
        naming.id,
      );
    }
  }
});

// ------------------------------------------------------------------ one LoRA in every naming

const base = await SafetensorsFile.open(BASE);
const baseShape = (key: string) => base.info(key).shape;
base.close();

const LAYERS = sdxlTestLayers(baseShape);
const NAMES: readonly TestNaming[] = TEST_NAMINGS;

/** ΔW = α/r · up · down of a read layer, in f64. */
function deltaOf(layer: LoraModel["layers"][number]): Float64Array {
  const { out, rank, inFlat, scale } = layer.factors;
  const up = decodeFloats(layer.factors.up.bytes, layer.factors.up.dtype as "F32", Float64Array);
  const down = decodeFloats(
    layer.factors.down.bytes,
    layer.factors.down.dtype as "F32",
    Float64Array,
  );
  const d = new Float64Array(out * inFlat);
  for (let i = 0; i < out; i++) {
    for (let k = 0; k < rank; k++) {
      const u = up[i * rank + k] * scale;
      for (let j = 0; j < inFlat; j++) d[i * inFlat + j] += u * down[k * inFlat + j];
    }
  }
  return d;
}

const twin = await writeInNaming(join(TMP, "kohya"), "kohya", LAYERS);
const twinModel = await readLoraFile(twin.path);

Deno.test("the kohya twin reads as kohya with the canonical name of every layer", () => {
  assertEquals(twinModel.namings, ["kohya"]);
  assertEquals(twinModel.architecture?.architecture, "sdxl");
  assertEquals(twinModel.layers.length, LAYERS.length);
  assertEquals(twinModel.passThrough.length, 0);
  for (const l of twinModel.layers) assertEquals(l.key, l.name);
});

for (const naming of NAMES.slice(1)) {
  Deno.test(`a LoRA in ${naming} naming reads to the kohya twin's canonical layers and ΔW`, async () => {
    const { path, written } = await writeInNaming(join(TMP, naming), naming, LAYERS);
    const model = await readLoraFile(path);
    // kohya-diffusers files keep kohya's text-encoder names: those layers read as kohya.
    const expectedNamings = naming === "kohya-diffusers" ? ["kohya", naming] : [naming];
    assertEquals([...model.namings].sort(), expectedNamings.sort());
    assertEquals(model.passThrough.map((t) => t.name), []);
    assertEquals(model.warnings, []);
    const byName = new Map(twinModel.layers.map((l) => [l.name, l]));
    assertEquals(model.layers.length, written.length);
    for (const layer of model.layers) {
      const expected = byName.get(layer.name);
      assert(expected, `${naming}: ${layer.key} → ${layer.name} is no layer of the twin`);
      // The layer was found under the keys the converter wrote for its module.
      const module = written.find((w) =>
        keysIn("kohya", w.module)!.down === `${expected.name}.lora_down.weight`
      )!.module;
      const spelled = keysIn(naming, module)!;
      const names = layer.tensors.map((t) =>
        t.name
      );
      assert(names.includes(spelled.down) && names.includes(spelled.up), names.join());
      assertEquals([layer.factors.rank, layer.factors.out, layer.factors.inFlat], [
        expected.factors.rank,
        expected.factors.out,
        expected.factors.inFlat,
      ]);
      assertEquals(layer.upShape, expected.upShape);
      assertEquals(layer.inShape, expected.inShape);
      const a = deltaOf(layer), b = deltaOf(expected);
      const norm = Math.hypot(...b);
      // Folding alpha/rank into an F32 up factor rounds once: ~1e-7 of the layer's norm.
      for (let i = 0; i < a.length; i++) {
        assertClose(a[i] / norm, b[i] / norm, 1e-6, `${layer.key}[${i}]`);
      }
      if (naming !== "diffusers" && naming !== "diffusers-attn-procs") {
        // Namings that keep alpha (PEFT: in adapter_config.json) keep the factors' bytes.
        assertEquals(layer.factors.up.bytes, expected.factors.up.bytes);
        assertEquals(layer.factors.down.bytes, expected.factors.down.bytes);
        assertRelClose(layer.alpha, expected.alpha, 1e-12);
      }
    }
  });
}

Deno.test("a plan of every naming keeps the ranks of the kohya twin", async () => {
  const backend = await createCpuBackend({ workers: 0 });
  const ranks = async (path: string) => {
    const [summary] = (await plan({
      checkpoint: BASE,
      loras: [path],
      recipes: "fro_ckpt=1,thr=-1.2",
      normsCache: false,
      backend,
    })).outputs;
    return new Map(summary.layers.map((l) => [l.name, l.kept]));
  };
  const expected = await ranks(twin.path);
  assert(
    [...expected.values()].some((k) => k > 0) &&
      [...expected.values()].some((k, i) => k < LAYERS[i].rank),
  );
  for (const naming of NAMES.slice(1)) {
    const got = await ranks(join(TMP, naming, "lora.safetensors"));
    assert(got.size > 0, naming);
    for (const [name, kept] of got) assertEquals(kept, expected.get(name), `${naming}: ${name}`);
  }
  await backend.close();
});

Deno.test("a file whose layers mix namings is read layer by layer", async () => {
  const half = Math.floor(LAYERS.length / 2);
  const dir = join(TMP, "mixed");
  const kohya = await writeInNaming(join(dir, "a"), "kohya", LAYERS.slice(0, half));
  const peft = await writeInNaming(join(dir, "b"), "comfyui", LAYERS.slice(half));
  const tensors = [];
  for (const path of [kohya.path, peft.path]) {
    await using f = await SafetensorsFile.open(path);
    const bytes = await f.readTensors(f.tensors.map((t) => t.name));
    for (const t of f.tensors) {
      tensors.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: bytes.get(t.name)! });
    }
  }
  const path = join(dir, "mixed.safetensors");
  await writeSafetensors(path, tensors);
  const model = await readLoraFile(path);
  assertEquals([...model.namings].sort(), ["comfyui", "kohya"]);
  assertEquals(model.layers.map((l) => l.name), twinModel.layers.map((l) => l.name));
});

Deno.test("output keys: a layer keeps its own spelling by default, and another naming spells it as the converter does", async () => {
  const twinModules = new Map(
    LAYERS.map((l) => [keysIn("kohya", l.module)!.down.slice(0, -".lora_down.weight".length), l]),
  );
  for (const naming of NAMES) {
    const path = join(TMP, naming, "lora.safetensors");
    const model = await readLoraFile(path);
    await using file = await SafetensorsFile.open(path);
    for (const layer of model.layers) {
      const own = outputKeys(layer)!;
      assert(file.has(own.down) && file.has(own.up), `${naming}: ${own.down}`);
      assertEquals(own.foldScale, !storesAlpha(naming));
      if (own.alpha) assert(file.has(own.alpha), own.alpha);
      const module = twinModules.get(layer.name)!.module;
      for (const target of OUTPUT_NAMINGS) {
        const keys = outputKeys(layer, { naming: target as TestNaming })!;
        const expected = keysIn(target as TestNaming, module)!;
        assertEquals([keys.down, keys.up], [expected.down, expected.up], `${naming} → ${target}`);
        assertEquals(keys.alpha, expected.alpha, `${naming} → ${target}`);
      }
    }
  }
});

Deno.test("output keys: kohya names for SD1.5 are kohya's own (diffusers block names, lora_te_)", () => {
  const unet = {
    name: "lora_unet_output_blocks_2_1_conv",
    key: "diffusion_model.output_blocks.2.1.conv",
    naming: "comfyui" as const,
  };
  assertEquals(
    outputKeys(unet, { naming: "kohya", architecture: "sd15" })?.down,
    keysIn("kohya-diffusers", { part: "unet", path: "output_blocks.2.1.conv" }, "sd15")!.down,
  );
  const te = {
    name: "lora_te_text_model_encoder_layers_0_mlp_fc1",
    key: "text_encoder.text_model.encoder.layers.0.mlp.fc1",
    naming: "peft" as const,
  };
  assertEquals(
    outputKeys(te, { naming: "kohya", architecture: "sd15" })?.down,
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
  );
  // An attention-processor file's other layers are written in plain diffusers names.
  const conv = { name: "lora_unet_out_2", key: "lora_unet_out_2", naming: "kohya" as const };
  assertEquals(
    outputKeys(conv, { naming: "diffusers-attn-procs" })?.down,
    "unet.conv_out.lora.down.weight",
  );
});
