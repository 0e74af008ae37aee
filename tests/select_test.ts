// Selection (docs/design.md, "Size targets bound the whole file"): hand-computed examples, a
// non-monotone file-size model, and the ranks the original tool wrote.
import { assert, assertClose, assertEquals, assertStrictEquals } from "./assert.ts";
import { parseRecipe, parseRecipes, type Recipe } from "../src/recipe/recipe.ts";
import { scoreLayer } from "../src/recipe/score.ts";
import { rankDimensions } from "../src/recipe/ranking.ts";
import {
  type FileSizeFn,
  formatTotalRankLine,
  selectBySizeFile,
  selectBySizeOriginal,
  selectByThreshold,
  type SizeSelection,
} from "../src/recipe/select.ts";

const MIB = 2 ** 20;
const f64 = (...values: number[]) => new Float64Array(values);

Deno.test("threshold mode keeps score ≥ t (inclusive)", () => {
  const scores = [f64(-1, -2, -3), f64(-2), f64(-2.0000000000000004)];
  assertEquals(selectByThreshold(scores, -2), { keep: [[0, 1], [0], []], threshold: -2 });
  assertEquals(selectByThreshold(scores, -Infinity).keep, [[0, 1, 2], [0], [0]]);
  assertEquals(selectByThreshold(scores, Infinity).keep, [[], [], []]);
  // Not necessarily a prefix (subspace scores need not decrease with σ).
  assertEquals(selectByThreshold([f64(-3, -1, -2)], -2).keep, [[1, 2]]);
  // NaN scores are never kept.
  assertEquals(selectByThreshold([f64(NaN, 0)], -Infinity).keep, [[1]]);
});

Deno.test("rankDimensions: descending, ties in layer then dimension order, NaN left out", () => {
  const ranking = rankDimensions([f64(-1, -2, NaN), f64(0, -1, -1), f64(-1)]);
  assertEquals(Array.from(ranking.score), [0, -1, -1, -1, -1, -2]);
  assertEquals(Array.from(ranking.layer), [1, 0, 1, 1, 2, 0]);
  assertEquals(Array.from(ranking.dim), [0, 0, 1, 2, 0, 1]);
  const infinite = rankDimensions([f64(-Infinity, Infinity), f64(-Infinity)]);
  assertEquals(Array.from(infinite.layer), [0, 0, 1]);
  assertEquals(Array.from(infinite.dim), [1, 0, 0]);
});

Deno.test("rankDimensions equals a stable sort by score, then layer, then dimension: descending layers (merged) and any layers (sorted)", () => {
  let seed = 11;
  const next = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  for (const monotone of [true, false]) {
    for (let trial = 0; trial < 20; trial++) {
      // Scores on a coarse grid, so that ties across and within layers are common.
      const scores = Array.from({ length: 1 + Math.floor(next() * 30) }, () => {
        const layer = Float64Array.from(
          { length: Math.floor(next() * 40) },
          () => next() < 0.05 ? NaN : Math.round(next() * 12) / 4 - 3,
        );
        if (monotone) layer.sort().reverse(); // NaNs sort last, then reverse: first
        return layer;
      });
      const want = scores.flatMap((layer, l) =>
        Array.from(layer, (score, dim) => ({ score, l, dim })).filter((x) => !Number.isNaN(x.score))
      ).sort((a, b) => b.score - a.score || a.l - b.l || a.dim - b.dim);
      const got = rankDimensions(scores);
      assertEquals(Array.from(got.score), want.map((x) => x.score));
      assertEquals(Array.from(got.layer), want.map((x) => x.l));
      assertEquals(Array.from(got.dim), want.map((x) => x.dim));
    }
  }
});

/** A worked example of the original's size mode: L1 4×6, σ = [2, 0.5]; L2 3×3, σ = [1]; `params=1`; F16. */
function workedExample() {
  const recipe = parseRecipe("params=1,size=1");
  const shapes = [
    { sigma: f64(2, 0.5), out: 4, inFlat: 6 },
    { sigma: f64(1), out: 3, inFlat: 3 },
  ];
  return shapes.map((s) => ({ ...s, scores: scoreLayer(recipe, s) }));
}

Deno.test("original size mode: a worked example by hand", () => {
  const layers = workedExample();
  assertClose(layers[0].scores[0], -0.69897, 1e-5);
  assertClose(layers[0].scores[1], -1.30103, 1e-5);
  assertClose(layers[1].scores[0], -0.778151, 1e-6);
  const select = (bytes: number) =>
    selectBySizeOriginal(layers, { targetMiB: bytes / MIB, elementSize: 2 });

  // Costs 20 (L1) and 12 (L2) bytes per dim; ranking L1[0], L2[0], L1[1]; cum 20, 32, 52.
  const at32 = select(32);
  assertEquals(at32.keep, [[0], [0]]);
  assertStrictEquals(at32.threshold, layers[1].scores[0]);
  assertEquals(at32.cut, {
    accounting: "original",
    totalRank: 2,
    threshold: layers[1].scores[0],
    targetMiB: 32 / MIB,
    realBytes: 32,
    nextBytes: 52,
  });
  const at33 = select(33);
  assertEquals(at33.keep, [[0, 1], [0]]);
  assertStrictEquals(at33.threshold, layers[0].scores[1]);
  assertEquals([at33.cut?.totalRank, at33.cut?.realBytes, at33.cut?.nextBytes], [3, 52, 52]);
  for (const bytes of [52, 1000]) {
    const all = select(bytes);
    assertEquals(all, { keep: [[0, 1], [0]], threshold: -Infinity });
  }
  // size=0 keeps the single best dimension; a target of exactly one dim's cost too.
  for (const bytes of [0, 20]) {
    const best = select(bytes);
    assertEquals(best.keep, [[0], []]);
    assertStrictEquals(best.threshold, layers[0].scores[0]);
  }
});

Deno.test("original size mode: every dimension tied with t is kept", () => {
  const layers = [
    { scores: f64(-1, -2), out: 4, inFlat: 6 }, // 20 bytes per dim
    { scores: f64(-1, -3), out: 3, inFlat: 3 }, // 12 bytes per dim
  ];
  const s = selectBySizeOriginal(layers, { targetMiB: 10 / MIB, elementSize: 2 });
  assertEquals(s.keep, [[0], [0]]); // 32 bytes although the target is reached by the first
  assertEquals([s.threshold, s.cut?.totalRank, s.cut?.realBytes, s.cut?.nextBytes], [
    -1,
    1,
    20,
    32,
  ]);
  // Element size 4 doubles every cost.
  const f32 = selectBySizeOriginal(layers, { targetMiB: 64 / MIB, elementSize: 4 });
  assertEquals([f32.cut?.totalRank, f32.cut?.realBytes], [2, 64]);
  // No layer at all: nothing to cut.
  assertEquals(selectBySizeOriginal([], { targetMiB: 0, elementSize: 2 }), {
    keep: [],
    threshold: -Infinity,
  });
});

/** A file-size model: header, per-layer overhead, 2 bytes per element, plus `noise`. */
function fakeFile(
  shapes: readonly { out: number; inFlat: number }[],
  noise: (kept: Uint32Array) => number = () => 0,
) {
  let calls = 0;
  const fileSize: FileSizeFn = (kept) => {
    calls++;
    let bytes = 1000;
    kept.forEach((k, l) => {
      if (k > 0) bytes += 150 + 2 * k * (shapes[l].out + shapes[l].inFlat);
    });
    return bytes + noise(kept);
  };
  return { fileSize, calls: () => calls };
}

/** Random layers with random scores (deterministic). */
function randomLayers(count: number, seed: number) {
  let state = seed;
  const next = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  return Array.from({ length: count }, () => {
    const k = 1 + Math.floor(next() * 8);
    // Rounded scores make ties common.
    const scores = Float64Array.from({ length: k }, () => Math.round(-next() * 40) / 10);
    return { scores, out: 4 + Math.floor(next() * 60), inFlat: 4 + Math.floor(next() * 60) };
  });
}

/** Kept count per layer of a selection. */
const counts = (keep: number[][]) => Uint32Array.from(keep, (k) => k.length);

Deno.test("file size mode: the longest fitting prefix of the ranking (monotone sizes)", () => {
  const layers = randomLayers(40, 99);
  const scores = layers.map((l) => l.scores);
  const ranking = rankDimensions(scores);
  const n = ranking.score.length;
  const { fileSize } = fakeFile(layers);
  // Brute force: the file size of every prefix.
  const prefixBytes = Array.from({ length: n + 1 }, (_, p) => {
    const kept = new Uint32Array(layers.length);
    for (let r = 0; r < p; r++) kept[ranking.layer[r]]++;
    return fileSize(kept);
  });
  for (let target = prefixBytes[0]; target <= prefixBytes[n] + 10; target += 37) {
    const file = fakeFile(layers);
    const s = selectBySizeFile(scores, { targetMiB: target / MIB, fileSize: file.fileSize });
    let longest = 0;
    while (longest < n && prefixBytes[longest + 1] <= target) longest++;
    const kept = counts(s.keep).reduce((a, b) => a + b, 0);
    assertStrictEquals(kept, longest, `target ${target}`);
    assertStrictEquals(s.fileBytes, prefixBytes[longest]);
    assert(s.fits);
    assert(file.calls() <= 2 + Math.ceil(Math.log2(n)), `${file.calls()} fileSize calls`);
    if (longest === n) {
      assertStrictEquals(s.threshold, -Infinity);
      assertStrictEquals(s.cut, undefined);
    } else {
      assertStrictEquals(s.threshold, longest > 0 ? ranking.score[longest - 1] : Infinity);
      assertEquals(s.cut, {
        accounting: "file",
        totalRank: longest,
        threshold: s.threshold,
        targetMiB: target / MIB,
        realBytes: prefixBytes[longest],
        nextBytes: prefixBytes[longest + 1],
      });
    }
  }
});

Deno.test("file size mode never exceeds the target when sizes are not monotone", () => {
  const layers = randomLayers(60, 7);
  const scores = layers.map((l) => l.scores);
  // Header text that shrinks and grows by up to ±40 bytes from one prefix to the next.
  const noise = (kept: Uint32Array) => {
    let h = 17;
    for (const k of kept) h = (h * 31 + k) % 9973;
    return (h % 81) - 40;
  };
  const { fileSize } = fakeFile(layers, noise);
  const empty = fileSize(new Uint32Array(layers.length));
  const full = fileSize(Uint32Array.from(layers, (l) => l.scores.length));
  let cuts = 0;
  for (let target = empty; target < full + 100; target += 13) {
    const s = selectBySizeFile(scores, { targetMiB: target / MIB, fileSize });
    assert(s.fits);
    const real = fileSize(counts(s.keep));
    assertStrictEquals(real, s.fileBytes);
    assert(real <= target, `target ${target}: file of ${real} bytes`);
    if (s.cut) {
      cuts++;
      assert(s.cut.nextBytes > target, `target ${target}: one more dim would fit`);
    }
  }
  assert(cuts > 100);
});

Deno.test("file size mode: ties split in layer order, nothing fits, everything fits", () => {
  const scores = [f64(-1), f64(-1), f64(-2)];
  const perDim: FileSizeFn = (kept) => 10 * kept.reduce((a, b) => a + b, 0);
  const tie = selectBySizeFile(scores, { targetMiB: 10 / MIB, fileSize: perDim });
  assertEquals([tie.keep, tie.threshold, tie.fileBytes], [[[0], [], []], -1, 10]);

  const header: FileSizeFn = (kept) => 100 + perDim(kept);
  const none = selectBySizeFile(scores, { targetMiB: 99 / MIB, fileSize: header });
  assertEquals([none.fits, none.keep, none.fileBytes], [false, [[], [], []], 100]);
  const zero = selectBySizeFile(scores, { targetMiB: 105 / MIB, fileSize: header });
  assertEquals([zero.fits, zero.keep, zero.threshold, zero.cut?.totalRank], [
    true,
    [[], [], []],
    Infinity,
    0,
  ]);
  const all = selectBySizeFile(scores, { targetMiB: 130 / MIB, fileSize: header });
  assertEquals(all, { keep: [[0], [0], [0]], threshold: -Infinity, fits: true, fileBytes: 130 });
});

Deno.test("formatTotalRankLine: the original's text, and the file accounting's", () => {
  const cut = {
    totalRank: 3766,
    threshold: -0.6774702072143555,
    targetMiB: 0.4,
    realBytes: 419432,
    nextBytes: 419456,
  };
  assertStrictEquals(
    formatTotalRankLine({ ...cut, accounting: "original" }),
    "Total rank: 3766. threshold -0.68: target:0.400M <= real:0.400M < next:0.400M",
  );
  assertStrictEquals(
    formatTotalRankLine({ ...cut, accounting: "file", realBytes: 400000, nextBytes: 500000 }),
    "Total rank: 3766. threshold -0.68: real:0.381M <= target:0.400M < next:0.477M",
  );
});

// --- Ranks the original tool wrote -----------------------------------------

const CASES = new URL("./fixtures/cases/", import.meta.url);
const readCase = (name: string) => JSON.parse(Deno.readTextFileSync(new URL(name, CASES)));
const INPUTS = readCase("inputs.json");
const BASE_NORMS = readCase("base_norms.json");

/**
 * An input LoRA's layers in processing order (sorted names) without its zero
 * layers (σ₀ < 1e-6, skipped). `sv` in inputs.json are the singular values of
 * alpha/rank·up@down (alpha-scaled); norms are the exact ones, correct rows.
 */
function fixtureLayers(lora: string) {
  const layers = INPUTS[lora].layers;
  return Object.keys(layers).sort().map((name) => {
    const l = layers[name];
    const norms = BASE_NORMS[l.base];
    return {
      name,
      sigma: new Float64Array(l.sv),
      out: l.out as number,
      inFlat: l.in_flat as number,
      froCkpt: norms.fro as number,
      spnCkpt: norms.spectral as number,
    };
  }).filter((l) => !(l.sigma[0] < 1e-6));
}

interface RecordedOutput {
  threshold: number | string;
  resize_params: { recipe_str: string };
  layers: Record<string, { rank: number }>;
  port_notes: {
    expected_differences: Record<string, { port: number }>;
    borderline?: [string, number, number][];
  };
}

/**
 * Scores and selects as the port does (`original` size accounting), then
 * compares every layer's rank with what the original wrote: exactly, except
 * `expected_differences` (the port's rank is used) and `borderline` dims
 * (within 1e-3 of the threshold: the rank may differ by their number).
 */
function replay(caseFile: string, recipe: Recipe, elementSize = 2) {
  const c = readCase(caseFile);
  const out = (c.outputs as RecordedOutput[]).find((o) =>
    o.resize_params.recipe_str === recipe.text
  );
  assert(out, `${caseFile}: no output for ${recipe.text}`);
  const layers = fixtureLayers(c.input_lora);
  const scores = layers.map((l) => scoreLayer(recipe, l));
  const selection: SizeSelection = recipe.sizeMiB === undefined
    ? selectByThreshold(scores, recipe.threshold!)
    : selectBySizeOriginal(layers.map((l, i) => ({ ...l, scores: scores[i] })), {
      targetMiB: recipe.sizeMiB,
      elementSize,
    });
  const borderline = new Map<string, number>();
  for (const [name] of out.port_notes.borderline ?? []) {
    borderline.set(name, (borderline.get(name) ?? 0) + 1);
  }
  let exact = 0;
  layers.forEach((layer, i) => {
    const expected = out.port_notes.expected_differences[layer.name]?.port ??
      out.layers[layer.name]?.rank ?? 0;
    const got = selection.keep[i].length;
    const slack = borderline.get(layer.name) ?? 0;
    assert(Math.abs(got - expected) <= slack, `${caseFile} ${layer.name}: ${got} ≠ ${expected}`);
    if (got === expected) exact++;
  });
  return { c, out, layers, selection, exact };
}

Deno.test("conformance M03 (spn_lora=1,thr=-0.7): every layer's rank", () => {
  const { layers, exact, out } = replay(
    "M03_spn_lora_thr.json",
    parseRecipe("spn_lora=1,thr=-0.7"),
  );
  assertStrictEquals(layers.length, 979);
  assert(out.port_notes.borderline!.length > 0);
  assert(exact >= layers.length - out.port_notes.borderline!.length);
});

Deno.test("conformance M08 (spn_lora=1,size=0.4, original accounting): ranks, threshold, log", () => {
  const recipe = parseRecipe("spn_lora=1,size=0.4");
  const { c, out, selection } = replay("M08_size.json", recipe);
  assertClose(selection.threshold, out.threshold as number, 1e-4);
  assert(selection.cut);
  const line = (c.log_info as string[]).find((l) => l.includes("Total rank"));
  assertStrictEquals(`INFO:root:${formatTotalRankLine(selection.cut)}`, line);
});

Deno.test("conformance M01 (fro_ckpt=1,thr=-3.5): ranks with exact norms and q,k,v rows", () => {
  const { out, exact, layers } = replay("M01_default_vv.json", parseRecipe("fro_ckpt=1,thr=-3.5"));
  // Five TE2 q/k layers get the port's rank, not the original's (their rows are q, k, v).
  assertStrictEquals(Object.keys(out.port_notes.expected_differences).length, 5);
  assert(exact >= layers.length - out.port_notes.borderline!.length);
});

Deno.test("conformance: every other case without subspace scores", () => {
  for (
    const [file, elementSize] of [
      ["M02_spn_ckpt_thr.json", 2],
      ["M04_fro_lora_thr_fp32_input.json", 2],
      ["M06_params_combo_locon.json", 2],
      ["M07_weighted_combo.json", 2],
      ["M09_size_above_total.json", 2],
      ["M10_rescale.json", 2],
      ["M11_three_recipes_locon.json", 2],
      ["M12_fp32_output_t32.json", 4],
      ["M13_bf16_input.json", 2],
      ["M14_dora.json", 2],
    ] as const
  ) {
    const c = readCase(file);
    for (const recipe of parseRecipes(c.recipes ?? "fro_ckpt=1,thr=-3.5")) {
      const { out, selection } = replay(file, recipe, elementSize);
      const recorded = Number(out.threshold); // "-Infinity" in M09
      if (recorded === -Infinity) assertStrictEquals(selection.threshold, -Infinity, file);
      else assertClose(selection.threshold, recorded, 1e-4, file);
    }
  }
});

Deno.test("file size mode guided by dimensionBytes: the same cut in a few measurements", () => {
  for (const seed of [3, 11, 29]) {
    const layers = randomLayers(300, seed);
    const scores = layers.map((l) => l.scores);
    const dimensionBytes = layers.map((l) => 2 * (l.out + l.inFlat));
    // Digits in the header: a few bytes more as the prefix grows, as real headers do.
    const digits = (kept: Uint32Array) => kept.reduce((a, k) => a + String(k).length, 0);
    const empty = fakeFile(layers, digits).fileSize(new Uint32Array(layers.length));
    const full = fakeFile(layers, digits).fileSize(
      Uint32Array.from(layers, (l) => l.scores.length),
    );
    let guidedCalls = 0, plainCalls = 0, targets = 0;
    for (let target = empty; target < full + 100; target += Math.ceil((full - empty) / 97)) {
      const plain = fakeFile(layers, digits), guided = fakeFile(layers, digits);
      const a = selectBySizeFile(scores, { targetMiB: target / MIB, fileSize: plain.fileSize });
      const b = selectBySizeFile(scores, {
        targetMiB: target / MIB,
        fileSize: guided.fileSize,
        dimensionBytes,
      });
      assertEquals(b, a, `seed ${seed}, target ${target}`);
      plainCalls += plain.calls();
      guidedCalls += guided.calls();
      targets++;
    }
    assert(guidedCalls * 2 < plainCalls, `${guidedCalls} vs ${plainCalls} calls`);
    assert(guidedCalls <= 6 * targets, `${guidedCalls} calls for ${targets} targets`);
  }
});

Deno.test("file size mode guided by wrong dimensionBytes still returns a measured cut", () => {
  const layers = randomLayers(60, 7);
  const scores = layers.map((l) => l.scores);
  const { fileSize } = fakeFile(layers);
  const empty = fileSize(new Uint32Array(layers.length));
  const full = fileSize(Uint32Array.from(layers, (l) => l.scores.length));
  for (const dimensionBytes of [layers.map(() => 1), layers.map(() => 1e6)]) {
    for (let target = empty; target < full; target += 97) {
      const s = selectBySizeFile(scores, { targetMiB: target / MIB, fileSize, dimensionBytes });
      const plain = selectBySizeFile(scores, { targetMiB: target / MIB, fileSize });
      assertEquals(s, plain);
    }
  }
});
