/**
 * kohya's per-layer resize rules (src/recipe/kohya.ts), checked against
 * hand-computed spectra and against the six K* conformance cases, which were
 * recorded by running kohya-ss/sd-scripts `networks/resize_lora.py` at commit
 * 48d368fa557731ad0488c07304dfeba8c07910eb (the commit whose code these rules
 * follow: `rank_resize`, `index_sv_*`, `resize_lora_model` and `resize`).
 *
 * Unit level: the σ come from `tests/fixtures/cases/inputs.json` (every
 * singular value of α/r·up·down, computed in float64 by the vectors' author).
 */
import { assert, assertEquals, assertRelClose } from "./assert.ts";
import {
  capScores,
  kohyaAlpha,
  kohyaDynamicRank,
  kohyaLayerStats,
  kohyaMetadata,
  kohyaRank,
  type KohyaRule,
  kohyaVerboseLine,
  kohyaVerboseSummary,
  selectKohya,
} from "../src/recipe/kohya.ts";
import { roundTo } from "../src/output.ts";
import { caseRule, inputs, kCases } from "./kohya_cases.ts";

const linear = (out: number, inFlat: number) => ({ out, inFlat, conv: false });

Deno.test("the dynamic methods keep one dimension more than their criterion (S = [4, 2, 1, 0.5])", () => {
  const s = [4, 2, 1, 0.5];
  // sv_ratio 3: σ > 4/3 for 2 values → 3. sv_fro 0.9: cum² = .753, .941 ≥ .81 at index 1 → 3.
  // sv_cumulative 0.9: cum = .533, .8, .933 ≥ .9 at index 2 → 4 (n − 1 = 3, so 4 at most).
  assertEquals(kohyaDynamicRank("sv_ratio", 3, s, 4), 3);
  assertEquals(kohyaDynamicRank("sv_fro", 0.9, s, 4), 3);
  assertEquals(kohyaDynamicRank("sv_cumulative", 0.9, s, 4), 4);
  // A ratio below every gap keeps only S₀ by the count, and 2 by the clamp: never fewer than 2.
  assertEquals(kohyaDynamicRank("sv_ratio", 1.5, s, 4), 2);
  assertEquals(kohyaDynamicRank("sv_fro", 0.1, s, 4), 2);
  // The equality of sv_ratio is strict: σ₁ = σ₀/2 exactly is not counted.
  assertEquals(kohyaDynamicRank("sv_ratio", 2, s, 4), 2);
  // The search is left-sided: cum² reaches exactly 1 at the last value.
  assertEquals(kohyaDynamicRank("sv_fro", 1, [3, 4], 2), 2);
});

Deno.test("σ past the stored rank count as zeros up to n = min(out, in′): the +1 can exceed the rank", () => {
  // Rank-2 layer in a 6 × 8 matrix: kohya's full SVD has n = 6 values, 4 of them 0.
  // sv_cumulative 1: cum = .75, 1, 1, … → index 1, +1, +1 → 3 > the stored rank 2.
  assertEquals(kohyaDynamicRank("sv_cumulative", 1, [3, 1], 6), 3);
  assertEquals(
    kohyaRank({ sigma: [3, 1], scale: 1 }, linear(6, 8), { method: "sv_cumulative", param: 1 }),
    3,
  );
  // sv_ratio never counts a zero.
  assertEquals(kohyaDynamicRank("sv_ratio", 1e9, [3, 1], 6), 3);
});

Deno.test("the cap: new_rank for linear layers, new_conv_rank for every 4-D layer, and min(out, in′)", () => {
  const spectrum = { sigma: [8, 7, 6, 5, 4, 3, 2, 1], scale: 0.5 };
  const rule: KohyaRule = { method: "sv_ratio", param: 100, rank: 6, convRank: 3 };
  assertEquals(kohyaRank(spectrum, linear(64, 64), rule), 6);
  assertEquals(kohyaRank(spectrum, { out: 64, inFlat: 64 * 9, conv: true }, rule), 3);
  assertEquals(kohyaRank(spectrum, { out: 64, inFlat: 64, conv: true }, rule), 3); // 1×1 too
  // conv_rank defaults to rank; no rank: only the layer's size caps.
  assertEquals(
    kohyaRank(spectrum, { out: 64, inFlat: 64, conv: true }, { ...rule, convRank: undefined }),
    6,
  );
  // (All 8 σ pass the ratio: 8, +1 = 9, a direction the layer does not have.)
  assertEquals(kohyaRank(spectrum, linear(64, 64), { method: "sv_ratio", param: 100 }), 9);
  // A fixed rank is the cap itself, above the stored rank too, but never above min(out, in′)
  // (kohya's reshape fails there).
  assertEquals(kohyaRank(spectrum, linear(64, 64), { rank: 12 }), 12);
  assertEquals(kohyaRank(spectrum, linear(10, 64), { rank: 12 }), 10);
  // n = 1: the clamp asks for 2, the layer has 1.
  assertEquals(
    kohyaRank({ sigma: [1], scale: 1 }, linear(1, 64), { method: "sv_fro", param: 0.5 }),
    1,
  );
});

Deno.test("a zero layer keeps rank 1 whatever the rule; the test is on up·down without α/r", () => {
  const zero = { sigma: [], scale: 0.5 };
  for (
    const rule of [{ method: "sv_fro", param: 0.9 }, { rank: 8 }, {
      method: "sv_ratio",
      param: 2,
      rank: 4,
    }] as KohyaRule[]
  ) {
    assertEquals(kohyaRank(zero, linear(32, 32), rule), 1);
  }
  // σ₀ = 4e-7 with α/r = 0.25: up·down has 1.6e-6 > 1e-6, not a zero layer.
  assertEquals(kohyaRank({ sigma: [4e-7, 1e-7], scale: 0.25 }, linear(32, 32), { rank: 8 }), 8);
  // σ₀ = 4e-7 with α/r = 1: 4e-7 ≤ 1e-6, a zero layer.
  assertEquals(kohyaRank({ sigma: [4e-7, 1e-7], scale: 1 }, linear(32, 32), { rank: 8 }), 1);
});

Deno.test("kohya's alpha keeps α/r, in float32 arithmetic", () => {
  const f32 = (x: number) => new Float32Array([x])[0];
  for (const [alpha, r, k] of [[4, 8, 3], [1, 3, 2], [0.1, 7, 5], [16, 16, 16], [3, 32, 9]]) {
    assertEquals(kohyaAlpha(alpha, r, k), f32(f32(f32(alpha) / r) * k), `${alpha}/${r}·${k}`);
  }
  assertEquals(kohyaAlpha(4, 8, 3), 1.5);
});

Deno.test("kohya's metadata: dynamic and fixed comments, dim and alpha (Python str of the numbers)", () => {
  assertEquals(
    kohyaMetadata({
      rule: { method: "sv_fro", param: 0.9, rank: 16 },
      maxOldRank: 8,
      lastAlpha: 2,
    }),
    {
      ss_training_comment: "Dynamic resize with sv_fro: 0.9 from 8; ",
      ss_network_dim: "Dynamic",
      ss_network_alpha: "Dynamic",
    },
  );
  assertEquals(
    kohyaMetadata({ rule: { rank: 4, convRank: 4 }, maxOldRank: 16, lastAlpha: 0.5, comment: "c" }),
    {
      ss_training_comment: "dimension is resized from 16 to 4; c",
      ss_network_dim: "4",
      ss_network_alpha: "0.5",
    },
  );
});

Deno.test("kohya's --verbose lines: shares, ratio, name padded (not cut) to 75, Python's number formats", () => {
  // S = [4, 2, 1, 0.5], rank 3: Σ kept 7 of 7.5, ‖·‖² 21 of 21.25, ratio 4/1.
  const stats = kohyaLayerStats([4, 2, 1, 0.5], 3);
  assertEquals(stats, { sumRetained: 7 / 7.5, froRetained: Math.sqrt(21 / 21.25), maxRatio: 4 });
  const name = "lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_q";
  assertEquals(
    kohyaVerboseLine(name, stats, { rank: 3, alpha: 1.5, dynamic: true }),
    `${name}${" ".repeat(75 - name.length)} | sum(S) retained: 93.3%, fro retained: 99.4%, ` +
      "max(S) ratio: 4.0, dynamic | dim: 3, alpha: 1.5",
  );
  const long = "x".repeat(80);
  assertEquals(
    kohyaVerboseLine(long, kohyaLayerStats([2, 1], 3), { rank: 3, alpha: 3, dynamic: false }),
    `${long} | sum(S) retained: 100.0%, fro retained: 100.0%, max(S) ratio: inf`,
  );
  // Population std of [0.5, 1] = 0.25; the zero layer's NaN is left out.
  assertEquals(
    kohyaVerboseSummary([0.5, 1, kohyaLayerStats([], 1).froRetained]),
    "Average Frobenius norm retention: 75.00% | std: 0.250",
  );
});

Deno.test("selectKohya keeps the leading dimensions, and counts the ones the layer lacks as extra rank", () => {
  const base = { out: 6, inFlat: 8, conv: false, scale: 0.5, alpha: 1, storedRank: 2 };
  const s = selectKohya([
    { ...base, sigma: new Float64Array([3, 1]) },
    { ...base, sigma: new Float64Array([]) },
  ], { method: "sv_cumulative", param: 1 });
  assertEquals(s.keep, [[0, 1], []]);
  assertEquals(s.ranks, [3, 1]);
  assertEquals(s.alphas, [1.5, 0.5]);
  assert(Number.isNaN(s.threshold));
});

Deno.test("capScores keeps the best-scoring dimensions of each layer up to its cap", () => {
  const scores = [new Float64Array([-1, -3, -2, NaN]), new Float64Array([-1, -2, -3])];
  const layers = [linear(9, 9), { out: 9, inFlat: 81, conv: true }];
  const capped = capScores(scores, layers, { rank: 2, convRank: 1 });
  assertEquals(Array.from(capped[0]), [-1, NaN, -2, NaN]);
  assertEquals(Array.from(capped[1]), [-1, NaN, NaN]);
  // Under the cap: unchanged (the same array).
  assert(capScores(scores, layers, { rank: 5, convRank: 5 })[0] === scores[0]);
});

// ---- The K* cases, from the σ of inputs.json ----

assertEquals(kCases.length, 6);

for (const c of kCases) {
  Deno.test(`${c.id}: every layer's rank, alpha and ‖ΔW‖_F from the input σ`, () => {
    const rule = caseRule(c.argv);
    const [output] = c.outputs;
    const dtype = output.dtypes[0] as "F16" | "BF16" | "F32";
    const layers = inputs[c.input_lora].layers;
    assertEquals(Object.keys(layers).sort(), Object.keys(output.layers).sort());
    for (const [name, layer] of Object.entries(layers)) {
      const want = output.layers[name];
      const shape = { out: layer.out, inFlat: layer.in_flat, conv: want.down.length === 4 };
      const rank = kohyaRank({ sigma: layer.sv, scale: layer.alpha / layer.rank }, shape, rule);
      assertEquals(rank, want.rank, `${name} rank`);
      assertEquals(
        roundTo(kohyaAlpha(layer.alpha, layer.rank, rank), dtype),
        want.alpha,
        `${name} alpha`,
      );
      // alpha/rank is kept, so ΔW keeps the leading σ as they are.
      const fro = Math.hypot(...layer.sv.slice(0, rank));
      // kohya's factors were rounded to the output dtype: BF16's 8 bits move ‖ΔW‖ by up to ~4e-3.
      const tol = dtype === "BF16" ? 8e-3 : 1e-3;
      if (want.delta_fro < 1e-9) assert(fro < 1e-9, `${name}: zero layer`);
      else assertRelClose(fro, want.delta_fro, tol, `${name} ‖ΔW‖`);
    }
  });
}

Deno.test("K*: kohya's ss_ metadata from the rule, the largest input rank and the last layer's alpha", () => {
  for (const c of kCases) {
    const rule = caseRule(c.argv);
    const [output] = c.outputs;
    const layers = inputs[c.input_lora].layers;
    const names = Object.keys(layers).sort((a, b) =>
      `${a}.lora_down.weight` < `${b}.lora_down.weight` ? -1 : 1
    );
    const got = kohyaMetadata({
      rule,
      maxOldRank: Math.max(...Object.values(layers).map((l) => l.rank)),
      lastAlpha: output.layers[names.at(-1)!].alpha,
      comment: "synthetic oracle fixture — not a trained model",
    });
    for (const [key, value] of Object.entries(got)) {
      assertEquals(value, output.metadata[key], `${c.id} ${key}`);
    }
  }
});
