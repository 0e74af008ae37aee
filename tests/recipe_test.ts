// The recipe language (docs/design.md, "Recipes are checked before they run"), file names and
// resize_params, checked against worked examples and the original
// tool's recorded outputs.
import { assert, assertEquals, assertRejects, assertStrictEquals } from "./assert.ts";
import { RecipeError } from "../src/errors.ts";
import {
  outputFileName,
  parseRecipe,
  parseRecipes,
  type Recipe,
  resizeParamsJson,
} from "../src/recipe/recipe.ts";

const ZERO = { spn_lora: 0, spn_ckpt: 0, subspace: 0, fro_lora: 0, fro_ckpt: 0, params: 0 };

Deno.test("the default recipe", () => {
  const recipe = parseRecipe("fro_ckpt=1,thr=-3.5");
  assertEquals(recipe, {
    text: "fro_ckpt=1,thr=-3.5",
    weights: { ...ZERO, fro_ckpt: 1 },
    threshold: -3.5,
    rescale: 1,
    warnings: [],
  });
});

Deno.test("weights: bare key = 1, signed normalisation, last occurrence wins", () => {
  const w = (text: string) => parseRecipe(text).weights;
  assertEquals(w("fro_ckpt=3,spn_lora,thr=-1"), { ...ZERO, fro_ckpt: 0.75, spn_lora: 0.25 });
  assertEquals(w("fro_ckpt=2,spn_lora=-1,thr=0"), { ...ZERO, fro_ckpt: 2, spn_lora: -1 });
  assertEquals(w("fro_ckpt=0.8,params=0.2,size=50"), { ...ZERO, fro_ckpt: 0.8, params: 0.2 });
  assertEquals(w("params=5,params=1,fro_lora=1,thr=1"), { ...ZERO, params: 0.5, fro_lora: 0.5 });
  assertEquals(w("subspace,spn_ckpt,thr=1"), { ...ZERO, subspace: 0.5, spn_ckpt: 0.5 });
  // A weight of 0 is a weight (no error), and the negative sum flips zeros to -0.
  assert(Object.is(w("fro_ckpt=-1,spn_lora=0,thr=1").spn_lora, -0));
});

Deno.test("values use Python float() syntax", () => {
  const recipe = parseRecipe("fro_ckpt=1_0,thr=-.35e1,rescale= 1. ");
  assertStrictEquals(recipe.threshold, -3.5);
  assertStrictEquals(recipe.rescale, 1);
  assertStrictEquals(parseRecipe("fro_ckpt,thr=-inf").threshold, -Infinity);
  assertStrictEquals(parseRecipe("fro_ckpt,size=0").sizeMiB, 0);
});

/** The message `parseRecipe(text)` throws. */
function messageOf(text: string): string {
  try {
    parseRecipes(text);
  } catch (e) {
    assert(e instanceof RecipeError, `expected a RecipeError, got ${e}`);
    return e.message;
  }
  throw new Error(`recipe ${JSON.stringify(text)} was accepted`);
}

Deno.test("errors: the original's messages, in its evaluation order", () => {
  const cases: [string, string][] = [
    ["foo=abc", "Could not parse foo=abc in recipe foo=abc"], // parse before key check
    ["fro_ckpt=1,thr=1=2", "Could not parse thr=1=2 in recipe fro_ckpt=1,thr=1=2"],
    ["fro_ckpt=x", "Could not parse fro_ckpt=x in recipe fro_ckpt=x"],
    ["fro_ckpt=1,thr= ", "Could not parse thr=  in recipe fro_ckpt=1,thr= "],
    ["fro_ckpt=0x10,thr=1", "Could not parse fro_ckpt=0x10 in recipe fro_ckpt=0x10,thr=1"],
    ["fro_ckpt=1,thr=", "Empty value not accepted for key thr in recipe fro_ckpt=1,thr="],
    ["fro_ckpt=1,size", "Empty value not accepted for key size in recipe fro_ckpt=1,size"],
    ["fro_ckpt=1,thr=-1,", "Empty value not accepted for key  in recipe fro_ckpt=1,thr=-1,"],
    ["", "Empty value not accepted for key  in recipe "],
    ["foo", "Empty value not accepted for key foo in recipe foo"],
    ["foo=1", "Unknown key foo in recipe foo=1"],
    // The original's message, and a suggestion when a key is within a typo's reach.
    [
      " fro_ckpt=1,thr=1",
      "Unknown key  fro_ckpt in recipe  fro_ckpt=1,thr=1 (did you mean fro_ckpt?)",
    ],
    [
      "FRO_CKPT=1,thr=1",
      "Unknown key FRO_CKPT in recipe FRO_CKPT=1,thr=1 (did you mean fro_ckpt?)",
    ],
    ["thr=1", "At least one score type must be specified"],
    ["fro_ckpt=1,spn_lora=-1,thr=1", "At least one score type must be specified"],
    ["fro_ckpt=0,thr=1", "At least one score type must be specified"],
    ["fro_ckpt=1", "Either 'size' or 'thr' must be specified in the recipe"],
    ["fro_ckpt=1,rescale=2", "Either 'size' or 'thr' must be specified in the recipe"],
    // The original's own errors come before the checks it did not make.
    ["rescale=0", "At least one score type must be specified"],
    ["fro_ckpt=1,size=-1,foo=2", "Unknown key foo in recipe fro_ckpt=1,size=-1,foo=2"],
  ];
  for (const [text, message] of cases) assertStrictEquals(messageOf(text), message, text);
});

Deno.test("errors: a mistyped key gets the nearest key", () => {
  const cases: [string, string][] = [
    ["fro_ckp=1,thr=-3", "Unknown key fro_ckp in recipe fro_ckp=1,thr=-3 (did you mean fro_ckpt?)"],
    [
      "fro_ckp,thr=-3",
      "Empty value not accepted for key fro_ckp in recipe fro_ckp,thr=-3 (did you mean fro_ckpt?)",
    ],
    [
      "spn_lroa=1,thr=-3",
      "Unknown key spn_lroa in recipe spn_lroa=1,thr=-3 (did you mean spn_lora?)",
    ],
    ["fro_ckpt=1,treshold=-3", "Unknown key treshold in recipe fro_ckpt=1,treshold=-3"],
    ["fro_ckpt=1,th=-3", "Unknown key th in recipe fro_ckpt=1,th=-3 (did you mean thr?)"],
    ["fro_ckpt=1,sise=2", "Unknown key sise in recipe fro_ckpt=1,sise=2 (did you mean size?)"],
    ["subspce=1,thr=-3", "Unknown key subspce in recipe subspce=1,thr=-3 (did you mean subspace?)"],
  ];
  for (const [text, message] of cases) assertStrictEquals(messageOf(text), message, text);
});

Deno.test("errors: unusable rescale, size and thr values are rejected at parse time", () => {
  const rejected: [string, RegExp][] = [
    ["fro_ckpt,thr=1,rescale=0", /^Invalid rescale=0 in recipe fro_ckpt,thr=1,rescale=0: /],
    ["fro_ckpt,thr=1,rescale=-0.5", /^Invalid rescale=-0\.5 in recipe .*finite and > 0$/],
    ["fro_ckpt,thr=1,rescale=inf", /^Invalid rescale=inf in recipe/],
    ["fro_ckpt,thr=1,rescale=nan", /^Invalid rescale=nan in recipe/],
    ["fro_ckpt,size=-1", /^Invalid size=-1 in recipe fro_ckpt,size=-1: .*finite and >= 0$/],
    ["fro_ckpt,size=inf", /^Invalid size=inf in recipe/],
    ["fro_ckpt,size=NaN", /^Invalid size=NaN in recipe/],
    ["fro_ckpt,thr=nan", /^Invalid thr=nan in recipe fro_ckpt,thr=nan: /],
    ["fro_ckpt,size=1,thr=nan", /^Invalid thr=nan in recipe/],
  ];
  for (const [text, pattern] of rejected) assert(pattern.test(messageOf(text)), text);
  // The last occurrence wins before the check.
  assertStrictEquals(parseRecipe("fro_ckpt,thr=1,rescale=0,rescale=2").rescale, 2);
  assertStrictEquals(parseRecipe("fro_ckpt,size=-0.0").sizeMiB, -0);
  assertStrictEquals(parseRecipe("fro_ckpt,thr=inf").threshold, Infinity);
});

Deno.test("size with thr: size wins, with a warning", () => {
  const recipe = parseRecipe("spn_lora,thr=-1,size=32");
  assertStrictEquals(recipe.sizeMiB, 32);
  assertStrictEquals(recipe.threshold, undefined);
  assertStrictEquals(recipe.warnings.length, 1);
  assert(/size=32 wins/.test(recipe.warnings[0]) && /thr=-1/.test(recipe.warnings[0]));
  assertEquals(parseRecipe("spn_lora,size=32").warnings, []);
});

Deno.test("parseRecipes splits on ':' and parses each", async () => {
  const recipes = parseRecipes("fro_ckpt=1,thr=-3.5:spn_ckpt=1,thr=-2.5:spn_lora=1,size=0.05");
  assertEquals(recipes.map((r) => r.text), [
    "fro_ckpt=1,thr=-3.5",
    "spn_ckpt=1,thr=-2.5",
    "spn_lora=1,size=0.05",
  ]);
  assertEquals(recipes.map((r) => r.sizeMiB ?? r.threshold), [-3.5, -2.5, 0.05]);
  await assertRejects(
    () => parseRecipes("fro_ckpt=1,thr=1::spn_lora,thr=1"),
    RecipeError,
    "Empty value not accepted for key  in recipe ",
  );
});

Deno.test("outputFileName: the original's names for worked examples", () => {
  const name = (recipe: string, t: number) => outputFileName("my_lora", parseRecipe(recipe), t);
  assertStrictEquals(name("fro_ckpt=1,thr=-3.5", -3.5), "my_lora_frockpt1_th-3.5.safetensors");
  assertStrictEquals(
    name("spn_ckpt=1,size=32", -2.871),
    "my_lora_spnckpt1_size32_th-2.87.safetensors",
  );
  assertStrictEquals(
    name("fro_ckpt=0.8,params=0.2,size=50", -1.125),
    "my_lora_frockpt0.8_params0.2_size50_th-1.12.safetensors",
  );
  assertStrictEquals(
    name("fro_ckpt=3,spn_lora,thr=-1,rescale=0.8", -1),
    "my_lora_frockpt0.75_spnlora0.25_scale0.8_th-1.safetensors",
  );
  assertStrictEquals(
    name("spn_lora=1,size=1000", -Infinity),
    "my_lora_spnlora1_size1000_th-inf.safetensors",
  );
});

Deno.test("outputFileName: alphabetical tokens, zero weights and rescale 1 omitted", () => {
  const name = (recipe: string, t: number) => outputFileName("x", parseRecipe(recipe), t);
  assertStrictEquals(
    name("subspace,spn_lora,spn_ckpt,params,fro_lora,fro_ckpt=0,thr=1", 1),
    "x_frolora0.2_params0.2_spnckpt0.2_spnlora0.2_subspace0.2_th1.safetensors",
  );
  assertStrictEquals(
    name("fro_ckpt=2,spn_lora=-1,thr=0", 0),
    "x_frockpt2_spnlora-1_th0.safetensors",
  );
  assertStrictEquals(name("fro_ckpt,thr=1,rescale=1.0", -0.001), "x_frockpt1_th-0.safetensors");
  assertStrictEquals(
    name("fro_ckpt,thr=1,rescale=0.625", 1),
    "x_frockpt1_scale0.62_th1.safetensors",
  );
  assertStrictEquals(
    name("fro_ckpt,size=0.4,thr=-9", -0.6774702),
    "x_frockpt1_size0.4_th-0.68.safetensors",
  );
});

Deno.test("resizeParamsJson: the original's text for the default recipe, byte for byte", () => {
  assertStrictEquals(
    resizeParamsJson(parseRecipe("fro_ckpt=1,thr=-3.5"), -3.5),
    '{"recipe_str": "fro_ckpt=1,thr=-3.5", "weights": {"spn_lora": 0.0, "spn_ckpt": 0.0, ' +
      '"subspace": 0.0, "fro_lora": 0.0, "fro_ckpt": 1.0, "params": 0.0}, "target_size": null, ' +
      '"threshold": -3.5, "rescale": 1.0}',
  );
});

Deno.test("resizeParamsJson: size mode with float32 and infinite thresholds", () => {
  const recipe = parseRecipe("spn_ckpt=1,size=32,rescale=0.5");
  const weights = '{"spn_lora": 0.0, "spn_ckpt": 1.0, "subspace": 0.0, "fro_lora": 0.0, ' +
    '"fro_ckpt": 0.0, "params": 0.0}';
  assertStrictEquals(
    resizeParamsJson(recipe, Math.fround(-Math.PI)),
    `{"recipe_str": "spn_ckpt=1,size=32,rescale=0.5", "weights": ${weights}, ` +
      '"target_size": 32.0, "threshold": -3.1415927410125732, "rescale": 0.5}',
  );
  assertStrictEquals(
    resizeParamsJson(recipe, -Infinity),
    `{"recipe_str": "spn_ckpt=1,size=32,rescale=0.5", "weights": ${weights}, ` +
      '"target_size": 32.0, "threshold": -Infinity, "rescale": 0.5}',
  );
  assertStrictEquals(
    resizeParamsJson(parseRecipe("fro_ckpt=3,spn_lora,size=1e-5,thr=1"), 2),
    '{"recipe_str": "fro_ckpt=3,spn_lora,size=1e-5,thr=1", "weights": {"spn_lora": 0.25, ' +
      '"spn_ckpt": 0.0, "subspace": 0.0, "fro_lora": 0.0, "fro_ckpt": 0.75, "params": 0.0}, ' +
      '"target_size": 1e-05, "threshold": 2.0, "rescale": 1.0}',
  );
  // Non-ASCII recipe text is escaped as json.dumps does (it can only occur in a
  // recipe that fails to parse, but the writer must not care).
  const odd: Recipe = { ...parseRecipe("fro_ckpt,thr=1"), text: "é" };
  assert(resizeParamsJson(odd, 1).startsWith('{"recipe_str": "\\u00e9", '));
});

interface CaseOutput {
  file: string;
  threshold: number | string;
  metadata: Record<string, string>;
  resize_params: { recipe_str: string };
}

Deno.test("conformance: file names and resize_params of every recorded output", () => {
  // The computed thresholds recorded by the original (float32 values) are fed
  // back in, so names and metadata must match the original's bytes exactly.
  const dir = new URL("./fixtures/cases/", import.meta.url);
  const files = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) =>
    /^M\d+.*\.json$/.test(n)
  );
  assertStrictEquals(files.length, 14);
  let checked = 0;
  for (const file of files.sort()) {
    const c = JSON.parse(Deno.readTextFileSync(new URL(file, dir)));
    const recipes = parseRecipes(c.recipes ?? "fro_ckpt=1,thr=-3.5");
    const loraName = (c.input_lora as string).replace(/\.safetensors$/, "");
    const outputs = c.outputs as CaseOutput[];
    for (const recipe of recipes) {
      // Find this recipe's output by its recipe_str; the threshold comes from it.
      const out = outputs.find((o) => o.resize_params.recipe_str === recipe.text);
      assert(out, `${file}: no output for ${recipe.text}`);
      const used = typeof out.threshold === "string" ? Number(out.threshold) : out.threshold;
      if (recipe.threshold !== undefined) assertStrictEquals(used, recipe.threshold, file);
      assertStrictEquals(outputFileName(loraName, recipe, used), out.file, file);
      assertStrictEquals(resizeParamsJson(recipe, used), out.metadata.resize_params, file);
      checked++;
    }
  }
  assertStrictEquals(checked, 16);
});
