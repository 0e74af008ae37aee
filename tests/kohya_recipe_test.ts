// kohya's keys in the recipe language: sv_ratio, sv_fro, sv_cumulative, rank, conv_rank.
import { assertEquals, assertRejects } from "./assert.ts";
import { RecipeError } from "../src/errors.ts";
import {
  kohyaRuleOf,
  outputFileName,
  parseRecipe,
  parseRecipes,
  resizeParamsJson,
} from "../src/recipe/recipe.ts";

const ZERO = { spn_lora: 0, spn_ckpt: 0, subspace: 0, fro_lora: 0, fro_ckpt: 0, params: 0 };

Deno.test("a kohya method with rank and conv_rank caps selects layer by layer, without a threshold", () => {
  const recipe = parseRecipe("sv_fro=0.9,rank=16,conv_rank=4");
  assertEquals(recipe, {
    text: "sv_fro=0.9,rank=16,conv_rank=4",
    weights: ZERO,
    rescale: 1,
    warnings: [],
    kohya: { method: "sv_fro", param: 0.9 },
    rank: 16,
    convRank: 4,
  });
  assertEquals(kohyaRuleOf(recipe), { method: "sv_fro", param: 0.9, rank: 16, convRank: 4 });
  assertEquals(kohyaRuleOf(parseRecipe("sv_ratio=8")), { method: "sv_ratio", param: 8 });
  assertEquals(kohyaRuleOf(parseRecipe("sv_cumulative=1,rescale=0.5"))?.method, "sv_cumulative");
});

Deno.test("rank alone is a fixed rank; with thr or size it is a cap on a score recipe", () => {
  assertEquals(kohyaRuleOf(parseRecipe("rank=8")), { rank: 8 });
  assertEquals(kohyaRuleOf(parseRecipe("rank=8,conv_rank=2")), { rank: 8, convRank: 2 });
  const capped = parseRecipe("spn_lora=1,thr=-1.2,rank=8,conv_rank=4");
  assertEquals(kohyaRuleOf(capped), undefined);
  assertEquals([capped.threshold, capped.rank, capped.convRank], [-1.2, 8, 4]);
  assertEquals(parseRecipe("fro_ckpt,size=32,conv_rank=2").convRank, 2);
  // Several recipes per pass mix freely.
  const mixed = parseRecipes("sv_fro=0.9,rank=16:fro_ckpt=1,thr=-3.5:rank=4");
  assertEquals(mixed.map((r) => kohyaRuleOf(r) !== undefined), [true, false, true]);
});

Deno.test("bad kohya values and combinations are one-line RecipeErrors naming the key", async () => {
  const bad: [string, string, string | undefined][] = [
    [
      "sv_ratio=0",
      "Invalid sv_ratio=0 in recipe sv_ratio=0: sv_ratio must be finite and > 0",
      "sv_ratio",
    ],
    [
      "sv_ratio=inf",
      "Invalid sv_ratio=inf in recipe sv_ratio=inf: sv_ratio must be finite and > 0",
      "sv_ratio",
    ],
    [
      "sv_fro=1.5",
      "Invalid sv_fro=1.5 in recipe sv_fro=1.5: sv_fro must be > 0 and <= 1",
      "sv_fro",
    ],
    [
      "sv_cumulative=0",
      "Invalid sv_cumulative=0 in recipe sv_cumulative=0: sv_cumulative must be > 0 and <= 1",
      "sv_cumulative",
    ],
    [
      "sv_fro=nan",
      "Invalid sv_fro=nan in recipe sv_fro=nan: sv_fro must be > 0 and <= 1",
      "sv_fro",
    ],
    ["sv_fro", "Empty value not accepted for key sv_fro in recipe sv_fro", "sv_fro"],
    ["sv_fro=x", "Could not parse sv_fro=x in recipe sv_fro=x", "sv_fro"],
    ["rank=0", "Invalid rank=0 in recipe rank=0: rank must be a whole number >= 1", "rank"],
    ["rank=2.5", "Invalid rank=2.5 in recipe rank=2.5: rank must be a whole number >= 1", "rank"],
    [
      "sv_fro=0.9,conv_rank=-1",
      "Invalid conv_rank=-1 in recipe sv_fro=0.9,conv_rank=-1: conv_rank must be a whole number >= 1",
      "conv_rank",
    ],
    [
      "sv_fro=0.9,sv_ratio=4",
      "Recipe sv_fro=0.9,sv_ratio=4 gives two kohya methods, sv_fro and sv_ratio",
      "sv_ratio",
    ],
    [
      "sv_fro=0.9,thr=-1",
      "Recipe sv_fro=0.9,thr=-1 combines sv_fro with thr: sv_fro picks each layer's rank by itself",
      "sv_fro",
    ],
    [
      "spn_lora,sv_ratio=4",
      "Recipe spn_lora,sv_ratio=4 combines sv_ratio with spn_lora: sv_ratio picks each layer's rank by itself",
      "sv_ratio",
    ],
    [
      "conv_rank=4",
      "Recipe conv_rank=4 gives conv_rank alone: add rank=N, a kohya method (sv_ratio, sv_fro, sv_cumulative), thr or size",
      "conv_rank",
    ],
    [
      "rank=4,rescale=0",
      "Invalid rescale=0 in recipe rank=4,rescale=0: rescale must be finite and > 0",
      "rescale",
    ],
    ["spn_lora,rank=8", "Either 'size' or 'thr' must be specified in the recipe", undefined],
  ];
  for (const [text, message, key] of bad) {
    const e = await assertRejects(
      () => Promise.resolve().then(() => parseRecipe(text)),
      RecipeError,
    );
    assertEquals([e.message, (e as RecipeError).key], [message, key]);
  }
});

Deno.test("file names: kohya keys after the weights, the method's parameter in full, no _th without a threshold", () => {
  const name = (text: string, t = NaN) => outputFileName("lora", parseRecipe(text), t);
  assertEquals(name("sv_fro=0.9,rank=16"), "lora_svfro0.9_rank16.safetensors");
  assertEquals(name("sv_ratio=8"), "lora_svratio8.safetensors");
  assertEquals(
    name("sv_cumulative=0.999,rank=8,conv_rank=2"),
    "lora_svcumulative0.999_rank8_convrank2.safetensors",
  );
  assertEquals(name("rank=4,rescale=0.5"), "lora_rank4_scale0.5.safetensors");
  assertEquals(name("spn_lora,thr=-1.2,rank=8", -1.2), "lora_spnlora1_rank8_th-1.2.safetensors");
  assertEquals(
    name("fro_ckpt,size=32,conv_rank=2", -2.871),
    "lora_frockpt1_convrank2_size32_th-2.87.safetensors",
  );
});

Deno.test("resize_params: kohya's option names after the original fields; threshold null without one", () => {
  assertEquals(
    resizeParamsJson(parseRecipe("sv_fro=0.9,rank=16"), NaN),
    '{"recipe_str": "sv_fro=0.9,rank=16", "weights": {"spn_lora": 0.0, "spn_ckpt": 0.0, ' +
      '"subspace": 0.0, "fro_lora": 0.0, "fro_ckpt": 0.0, "params": 0.0}, "target_size": null, ' +
      '"threshold": null, "rescale": 1.0, "dynamic_method": "sv_fro", "dynamic_param": 0.9, "new_rank": 16}',
  );
  assertEquals(
    JSON.parse(resizeParamsJson(parseRecipe("spn_lora,thr=-1,conv_rank=2"), -1)),
    {
      recipe_str: "spn_lora,thr=-1,conv_rank=2",
      weights: { ...ZERO, spn_lora: 1 },
      target_size: null,
      threshold: -1,
      rescale: 1,
      new_conv_rank: 2,
    },
  );
});
