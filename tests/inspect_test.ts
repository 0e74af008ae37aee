import { Ajv } from "ajv";
import { assert, assertClose, assertEquals } from "./assert.ts";
import { effectiveRank, formatInspectTable, type InspectResult } from "../src/report/inspect.ts";
import { inspect } from "../src/inspect.ts";
import { selectBackend } from "../src/linalg/select_backend.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { type TensorSource, writeSafetensors } from "../src/safetensors/writer.ts";
import { delegating } from "./delegating_backend.ts";

const FIXTURES = "tests/fixtures";
const BASE = `${FIXTURES}/micro_sdxl_base.safetensors`;
const SCHEMA = JSON.parse(await Deno.readTextFile("tests/inspect.schema.json"));
const validate = new Ajv({ allErrors: true, strict: true }).compile(SCHEMA);

const TMP = await Deno.makeTempDir({ prefix: "inspect_test_" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

/** Asserts the `--json` form validates and survives a JSON round trip (no NaN, ±∞, undefined). */
function assertJson(result: InspectResult): void {
  const json = JSON.parse(JSON.stringify(result));
  assertEquals(json, result);
  if (!validate(json)) throw new Error(JSON.stringify(validate.errors, null, 1));
}

/** A row-major matrix with the given non-zero entries. */
function matrix(rows: number, cols: number, entries: [number, number, number][]): Float32Array {
  const m = new Float32Array(rows * cols);
  for (const [i, j, v] of entries) m[i * cols + j] = v;
  return m;
}

function tensor(name: string, shape: number[], values: ArrayLike<number>): TensorSource {
  return { name, dtype: "F32", shape, data: encodeFloats(values, "F32") };
}

/**
 * A LoRA whose singular values are known by construction (up columns scaled
 * unit vectors, down rows unit vectors), shaped for the micro SDXL base:
 * - IN04 proj_in, 10×10, r 3, α 3: σ = 3, 2, 2⁻⁶;
 * - OUT02 upsample conv, 20×(20·3·3), r 2, α 1 (scale ½): σ = 2, 0;
 * - TE1 fc1, 48×12, r 1, no alpha, up = 0: σ = 0;
 * - a layer with no base weight, 2×2, r 1, α 1: σ = 1;
 * - one Tucker LoHa tensor (pass-through).
 */
async function writeHandMadeLora(path: string): Promise<void> {
  const proj = "lora_unet_input_blocks_4_1_proj_in";
  const conv = "lora_unet_output_blocks_2_2_conv";
  const fc1 = "lora_te1_text_model_encoder_layers_0_mlp_fc1";
  const orphan = "lora_unet_foo_proj";
  await writeSafetensors(path, [
    tensor(`${proj}.alpha`, [], [3]),
    tensor(
      `${proj}.lora_up.weight`,
      [10, 3],
      matrix(10, 3, [[0, 0, 3], [1, 1, 2], [2, 2, 2 ** -6]]),
    ),
    tensor(`${proj}.lora_down.weight`, [3, 10], matrix(3, 10, [[0, 0, 1], [1, 1, 1], [2, 2, 1]])),
    tensor(`${conv}.alpha`, [], [1]),
    tensor(`${conv}.lora_up.weight`, [20, 2, 1, 1], matrix(20, 2, [[0, 0, 4]])),
    tensor(`${conv}.lora_down.weight`, [2, 20, 3, 3], matrix(2, 180, [[0, 0, 1], [1, 1, 1]])),
    tensor(`${fc1}.lora_up.weight`, [48, 1], new Float32Array(48)),
    tensor(`${fc1}.lora_down.weight`, [1, 12], matrix(1, 12, [[0, 3, 1]])),
    tensor(`${orphan}.alpha`, [], [1]),
    tensor(`${orphan}.lora_up.weight`, [2, 1], [1, 0]),
    tensor(`${orphan}.lora_down.weight`, [1, 2], [1, 0]),
    tensor("lora_unet_x.hada_t1", [2, 2], [1, 2, 3, 4]),
  ], { metadata: { ss_network_dim: "3" } });
}

const HAND = `${TMP}/hand.safetensors`;
await writeHandMadeLora(HAND);

Deno.test("effectiveRank: σ above 1 % of σ₁", () => {
  assertEquals(effectiveRank(new Float64Array([2, 0.5, 0.03, 0.01])), 3);
  assertEquals(effectiveRank(new Float64Array([2, 0.5, 0.02, 0.01])), 2); // 0.02 is not above 1 %
  assertEquals(effectiveRank(new Float64Array([2, 0.5, 0.03, 0.01]), 0.2), 2);
  assertEquals(effectiveRank(new Float64Array([0, 0])), 0);
  assertEquals(effectiveRank(new Float64Array([])), 0);
});

Deno.test("inspect without a checkpoint: a hand-made LoRA's ranks, energies and blocks", async () => {
  await using backend = await selectBackend("cpu");
  const result = await inspect({ lora: HAND, backend });
  assertJson(result);
  const total = 9 + 4 + 2 ** -12 + 4 + 1;
  assertEquals(result.checkpoint, null);
  assertEquals(result.recipes, []);
  assertEquals(
    [result.layerCount, result.zeroLayers, result.totalRank, result.effectiveRank],
    [4, 1, 7, 4],
  );
  assertEquals([result.parameters, result.passThroughTensors], [3 * 20 + 2 * 200 + 60 + 4, 1]);

  const byName = new Map(result.layers.map((l) => [l.name, l]));
  const proj = byName.get("lora_unet_input_blocks_4_1_proj_in")!;
  assertEquals([proj.block, proj.kind, proj.out, proj.inShape, proj.rank, proj.alpha], [
    "IN04",
    "linear",
    10,
    [10],
    3,
    3,
  ]);
  assertEquals(proj.sigma.length, 3);
  [3, 2, 2 ** -6].forEach((s, i) => assertClose(proj.sigma[i], s, 1e-6, `σ${i + 1}`));
  assertEquals(proj.effectiveRank, 2); // 2⁻⁶ < 1 % of 3
  assertClose(proj.frobenius, Math.sqrt(9 + 4 + 2 ** -12), 1e-6);
  assertClose(proj.energyShare, (9 + 4 + 2 ** -12) / total, 1e-6);
  assertEquals([proj.base, proj.baseFrobenius, proj.baseSpectral, proj.recipes], [
    null,
    null,
    null,
    [],
  ]);

  const conv = byName.get("lora_unet_output_blocks_2_2_conv")!;
  assertEquals([conv.block, conv.kind, conv.out, conv.inShape, conv.rank, conv.alpha], [
    "OUT02",
    "conv",
    20,
    [20, 3, 3],
    2,
    1,
  ]);
  assertClose(conv.sigma1, 2, 1e-6);
  assertClose(conv.sigma[1], 0, 1e-6);
  assertEquals(conv.effectiveRank, 1);
  assertClose(conv.energyShare, 4 / total, 1e-6);

  const fc1 = byName.get("lora_te1_text_model_encoder_layers_0_mlp_fc1")!;
  assertEquals([fc1.block, fc1.alpha, fc1.sigma1, fc1.effectiveRank, fc1.energyShare], [
    "TE1",
    1,
    0,
    0,
    0,
  ]);

  assertEquals(
    result.blocks.map((b) => [b.block, b.layers, b.rank, b.effectiveRank, b.parameters]),
    [
      ["TE1", 1, 1, 0, 60],
      ["IN04", 1, 3, 2, 60],
      ["OUT02", 1, 2, 1, 400],
      ["BASE", 1, 1, 1, 4],
    ],
  );
  assertClose(result.blocks.reduce((a, b) => a + b.energyShare, 0), 1, 1e-12);

  const text = formatInspectTable(result);
  assert(text.startsWith(`LoRA        ${HAND}\n`), text);
  // Usable rank: TE1's all-zero layer counts for nothing, the others min(r, out, in′) = r.
  assert(
    text.includes("layers      4 (1 all-zero), stored rank 7, usable rank 6, effective rank 4"),
    text,
  );
  assertEquals(result.usableRank, 6);
  assert(/^OUT02 +1 +2 +2 +1 +22\.22 % +400$/m.test(text), text);
  assert(
    /^lora_unet_output_blocks_2_2_conv +OUT02 +conv +LoRA +20×20×3×3 +2 +1 +1 /m.test(text),
    text,
  );
});

Deno.test("inspect with a checkpoint: base norms and what each recipe keeps", async () => {
  await using backend = await selectBackend("cpu");
  const norms = JSON.parse(await Deno.readTextFile(`${FIXTURES}/cases/base_norms.json`));
  // Neither recipe needs base norms: the Frobenius norms come anyway.
  const result = await inspect({
    lora: HAND,
    checkpoint: BASE,
    recipes: "fro_lora=1,thr=-1:spn_lora=1,thr=-0.1",
    normsCache: false,
    backend,
  });
  assertJson(result);
  assertEquals(result.checkpoint, BASE);
  assertEquals(result.recipes.map((r) => [r.recipe, r.threshold, r.rankBefore, r.rankAfter]), [
    ["fro_lora=1,thr=-1", -1, 5, 3],
    ["spn_lora=1,thr=-0.1", -0.1, 5, 2],
  ]);
  const byName = new Map(result.layers.map((l) => [l.name, l]));
  // fro_lora: log10(σ/‖σ‖) > −1 keeps σ = 3, 2 of (3, 2, 2⁻⁶) and 2 of (2, 0);
  // spn_lora: log10(σ/σ₁) > −0.1 keeps σ₁ only.
  const expected: [string, string, number[]][] = [
    [
      "lora_unet_input_blocks_4_1_proj_in",
      "model.diffusion_model.input_blocks.4.1.proj_in.weight",
      [2, 1],
    ],
    ["lora_unet_output_blocks_2_2_conv", "model.diffusion_model.output_blocks.2.2.conv.weight", [
      1,
      1,
    ]],
  ];
  for (const [name, key, kept] of expected) {
    const layer = byName.get(name)!;
    assertEquals(layer.base, key);
    assertEquals(layer.recipes.map((r) => r.kept), kept, name);
    assertEquals(layer.recipes[1].scores.length, layer.sigma.length);
    assertClose(layer.recipes[1].scores[0]!, 0, 1e-12, `${name} spn_lora score of σ₁`);
    assertClose(layer.baseFrobenius!, norms[key].fro, 1e-6, name);
    assertEquals(layer.baseSpectral, null);
  }
  // σ₂ = 0 scores −∞: null in JSON.
  assertEquals(byName.get("lora_unet_output_blocks_2_2_conv")!.recipes[0].scores[1], null);
  // Not resized: the all-zero layer and the layer without a base weight.
  for (const name of ["lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_unet_foo_proj"]) {
    assertEquals(byName.get(name)!.recipes, [{ kept: null, scores: [] }, {
      kept: null,
      scores: [],
    }]);
    assertEquals(byName.get(name)!.base, null);
  }
  assertEquals(result.blocks.map((b) => [b.block, b.kept]), [
    ["TE1", [0, 0]],
    ["IN04", [2, 1]],
    ["OUT02", [1, 1]],
    ["BASE", [0, 0]],
  ]);
  const text = formatInspectTable(result);
  assert(text.includes("recipe r2   spn_lora=1,thr=-0.1: usable rank 5 → 2,"), text);
  assert(/^lora_unet_foo_proj +BASE .* – +–$/m.test(text), text);
});

Deno.test("inspect: the conformance LoRAs' spectra and energies match the independent values", async () => {
  const inputs: Record<string, { layers: Record<string, { sv: number[]; rank: number }> }> = JSON
    .parse(await Deno.readTextFile(`${FIXTURES}/cases/inputs.json`));
  await using backend = await selectBackend("cpu");
  for (const file of ["microA_r8_te.safetensors", "microB-locon-r8c4.safetensors"]) {
    const result = await inspect({ lora: `${FIXTURES}/${file}`, backend });
    assertJson(result);
    const expected = inputs[file].layers;
    assertEquals(result.layers.map((l) => l.name), Object.keys(expected).sort());
    const energy = (sv: number[]) => sv.reduce((a, s) => a + s * s, 0);
    const total = Object.values(expected).reduce((a, l) => a + energy(l.sv), 0);
    for (const layer of result.layers) {
      const { sv, rank } = expected[layer.name];
      assertEquals(layer.rank, rank);
      const scale = Math.max(sv[0], 1e-30);
      for (let i = 0; i < sv.length; i++) {
        assertClose(layer.sigma[i] / scale, sv[i] / scale, 1e-5, `${layer.name} σ${i + 1}`);
      }
      assertClose(layer.energyShare, energy(sv) / total, 1e-5, layer.name);
      // Effective rank from the reference σ, unless one sits at the 1 % floor.
      const floor = 0.01 * sv[0];
      if (sv.every((s) => Math.abs(s - floor) > 1e-5 * sv[0])) {
        assertEquals(layer.effectiveRank, sv[0] > 0 ? sv.filter((s) => s > floor).length : 0);
      }
    }
  }
});

Deno.test("inspect with a checkpoint reuses the plan's spectra: the same σ as without one", async () => {
  await using backend = await selectBackend("cpu");
  for (const lora of [HAND, `${FIXTURES}/microB-locon-r8c4.safetensors`]) {
    const alone = await inspect({ lora, backend });
    const withBase = await inspect({ lora, checkpoint: BASE, normsCache: false, backend });
    assertEquals(
      withBase.layers.map((l) => [l.name, l.sigma]),
      alone.layers.map((l) => [l.name, l.sigma]),
    );
  }
});

Deno.test("inspect with a checkpoint decomposes each layer once: the plan's work is shared", async () => {
  await using cpu = await selectBackend("cpu");
  const decomposed: number[] = [];
  const counting = delegating(cpu, {
    decompose: (factors, options) => {
      decomposed.push(factors.length);
      return cpu.decompose(factors, options);
    },
  });

  const result = await inspect({
    lora: HAND,
    checkpoint: BASE,
    normsCache: false,
    backend: counting,
  });
  // Every layer of the file, once, while the base is opened; nothing is left to decompose after
  // (and a call with nothing to do never reaches the backend).
  assertEquals(decomposed, [result.layerCount]);
});

Deno.test("inspect: a bad path fails with the file named", async () => {
  let message = "";
  try {
    await inspect({ lora: `${TMP}/missing.safetensors` });
  } catch (e) {
    message = (e as Error).message;
  }
  assert(message.includes("missing.safetensors"), message);
});

Deno.test("inspect without a checkpoint plans recipes that need no base, and names a key that does", async () => {
  await using backend = await selectBackend("cpu");
  const recipes = "fro_lora=1,thr=-1:spn_lora=1,thr=-0.1";
  const free = await inspect({ lora: HAND, recipes, normsCache: false, backend });
  assertJson(free);
  assertEquals(free.checkpoint, null);
  // The same σ and scores as with the base; here every layer is resized, the one that pairs with
  // no base weight included (σ (3, 2, 2⁻⁶), (2, 0) and its own).
  const byName = new Map(free.layers.map((l) => [l.name, l]));
  assertEquals(byName.get("lora_unet_input_blocks_4_1_proj_in")!.recipes.map((r) => r.kept), [
    2,
    1,
  ]);
  assertEquals(byName.get("lora_unet_output_blocks_2_2_conv")!.recipes.map((r) => r.kept), [1, 1]);
  assert(byName.get("lora_unet_foo_proj")!.recipes.length === 2, "resized without a base");
  assert(free.layers.every((l) => l.baseFrobenius === null));
  const error = await inspect({ lora: HAND, recipes: "spn_ckpt=1,thr=-1", backend }).then(
    () => undefined,
    (e) => e,
  );
  assertEquals([error?.name, error?.key], ["RecipeError", "spn_ckpt"]);
});
