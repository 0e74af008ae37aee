import { assert, assertClose, assertEquals } from "./assert.ts";
import { blockOf, compareBlocks, groupByBlock } from "../src/report/blocks.ts";
import { formatDryRun, summarizeByBlock } from "../src/report/dry_run.ts";
import { formatCount, formatPercent, formatTable } from "../src/report/table.ts";
import { escapeHtml, externalReferences, renderReport } from "../src/report/html.ts";
import { pyJsonDumps } from "../src/recipe/pyformat.ts";
import { loraNamesForBaseKey } from "../src/base/key_map.ts";
import type { CurvePoint, LayerSummary, OutputSummary } from "../src/summary.ts";
import { plan, resize } from "../src/resize.ts";
import { selectBackend } from "../src/linalg/select_backend.ts";

const FIXTURES = "tests/fixtures";
const BASE = `${FIXTURES}/micro_sdxl_base.safetensors`;
const LORA_B = `${FIXTURES}/microB-locon-r8c4.safetensors`;

/** The block of a base checkpoint key, read off its dotted path. */
function blockOfBaseKey(key: string): string {
  if (key.startsWith("conditioner.embedders.0.")) return "TE1";
  if (key.startsWith("conditioner.embedders.1.")) return "TE2";
  const m = key.match(/^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.(\d+)/);
  if (!m) return "BASE";
  const index = m[2].padStart(2, "0");
  return m[1] === "input_blocks" ? `IN${index}` : m[1] === "middle_block" ? "MID" : `OUT${index}`;
}

Deno.test("blockOf: every layer of the conformance LoRAs lies in its base weight's block", async () => {
  const inputs: Record<string, { layers: Record<string, { base: string }> }> = JSON.parse(
    await Deno.readTextFile(`${FIXTURES}/cases/inputs.json`),
  );
  let n = 0;
  const seen = new Set<string>();
  for (const { layers } of Object.values(inputs)) {
    for (const [name, { base }] of Object.entries(layers)) {
      const expected = blockOfBaseKey(base);
      assertEquals(blockOf(name), expected, name);
      seen.add(expected);
      n++;
    }
  }
  assert(n > 1500, `${n} layers`);
  for (const block of ["TE1", "TE2", "IN01", "IN03", "IN08", "MID", "OUT00", "OUT08"]) {
    assert(seen.has(block), block);
  }
});

Deno.test("blockOf: standard, direct and short names of every SDXL weight", async () => {
  const keys: { tensors: Record<string, { shape: number[] }> } = JSON.parse(
    await Deno.readTextFile(`${FIXTURES}/sdxl_keys.json`),
  );
  let checked = 0;
  for (const [key, { shape }] of Object.entries(keys.tensors)) {
    const names = loraNamesForBaseKey(key, shape);
    if (!names) continue;
    const expected = blockOfBaseKey(key);
    for (const name of [names.standard, names.direct, ...(names.chunks ?? [])]) {
      if (name !== undefined) assertEquals(blockOf(name), expected, `${key} → ${name}`);
    }
    if (names.short !== undefined) {
      // `text_model_encoder_N_…` aliases do not say which encoder.
      assertEquals(blockOf(names.short), expected.startsWith("TE") ? "TE" : expected, names.short);
    }
    checked++;
  }
  assert(checked > 700, `${checked} keys`);
});

Deno.test("blockOf: short aliases, diffusers names and the rest", () => {
  const cases: [string, string][] = [
    ["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "IN04"],
    ["lora_unet_middle_block_1_proj_in", "MID"],
    ["lora_unet_output_blocks_2_1_conv", "OUT02"],
    ["lora_unet_input_blocks_0_0", "IN00"],
    ["down_4", "IN04"],
    ["mid_1_in", "MID"],
    ["up_0_skip", "OUT00"],
    ["up_11", "OUT11"],
    ["text_model_encoder_3_mlp", "TE"],
    ["lora_te_text_model_encoder_layers_0_mlp_fc1", "TE"],
    ["lora_unet_time_embed_0", "BASE"],
    ["lora_unet_label_emb_0_0", "BASE"],
    ["lora_unet_out_2", "BASE"],
    ["time_embed_2", "BASE"],
    // SDXL diffusers layout: 3 slots per level (2 ResNets/attentions + resampler).
    ["lora_unet_conv_in", "IN00"],
    ["lora_unet_down_blocks_0_resnets_0_conv1", "IN01"],
    ["lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"],
    ["lora_unet_down_blocks_1_attentions_0_proj_in", "IN04"],
    ["lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_ff_net_2", "IN08"],
    ["lora_unet_mid_block_attentions_0_proj_out", "MID"],
    ["lora_unet_up_blocks_0_attentions_2_proj_in", "OUT02"],
    ["lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"],
    ["lora_unet_up_blocks_1_resnets_1_conv_shortcut", "OUT04"],
    ["lora_unet_up_blocks_2_resnets_2_conv2", "OUT08"],
    ["lora_unet_conv_out", "BASE"],
    ["lycoris_foo", "OTHER"],
    ["downsample", "OTHER"],
    ["", "OTHER"],
  ];
  for (const [name, block] of cases) assertEquals(blockOf(name), block, name);
});

Deno.test("compareBlocks and groupByBlock: model order, items kept in order", () => {
  const labels = ["OTHER", "OUT10", "BASE", "OUT02", "MID", "IN10", "IN02", "TE", "TE2", "TE1"];
  assertEquals([...labels].sort(compareBlocks), [
    "TE1",
    "TE2",
    "TE",
    "IN02",
    "IN10",
    "MID",
    "OUT02",
    "OUT10",
    "BASE",
    "OTHER",
  ]);
  const groups = groupByBlock([
    { name: "lora_unet_output_blocks_0_1_a" },
    { name: "lora_te2_x" },
    { name: "lora_unet_output_blocks_0_1_b" },
    { name: "lora_te1_y" },
  ]);
  assertEquals(groups.map((g) => [g.block, g.items.map((i) => i.name)]), [
    ["TE1", ["lora_te1_y"]],
    ["TE2", ["lora_te2_x"]],
    ["OUT00", ["lora_unet_output_blocks_0_1_a", "lora_unet_output_blocks_0_1_b"]],
  ]);
});

/** A layer plan from σ and a kept count (the largest σ kept); scores are log10(σ). */
function layerPlan(name: string, sigma: number[], kept: number, extra: Partial<LayerSummary> = {}) {
  return {
    name,
    base: `${name}.weight`,
    kind: "linear" as const,
    out: 10,
    inShape: [12],
    rank: sigma.length,
    alpha: sigma.length,
    dims: sigma.length,
    kept,
    keep: [...sigma.keys()].sort((a, b) => sigma[b] - sigma[a] || a - b).slice(0, kept).sort((
      a,
      b,
    ) => a - b),
    sigma: new Float64Array(sigma),
    scores: new Float64Array(sigma.map(Math.log10)),
    ...extra,
  };
}

Deno.test("summarizeByBlock: per-block ranks, energy shares and errors by hand", () => {
  const layers = [
    layerPlan("lora_te1_a", [4, 3], 1), // block TE1: energy 25, drops 9
    layerPlan("lora_unet_input_blocks_4_1_x", [2, 1, 1], 3), // IN04: energy 6, drops 0
    layerPlan("lora_unet_input_blocks_4_1_y", [3, 1], 0), // IN04: energy 10, drops 10
  ];
  const s = summarizeByBlock(layers);
  assertEquals(s.blocks.map((b) => [b.block, b.layers, b.rankBefore, b.rankAfter]), [
    ["TE1", 1, 2, 1],
    ["IN04", 2, 5, 3],
  ]);
  assertClose(s.blocks[0].relativeError, 3 / 5, 1e-15);
  assertClose(s.blocks[1].relativeError, Math.sqrt(10 / 16), 1e-15);
  assertClose(s.blocks[0].energyShare, 25 / 41, 1e-15);
  assertClose(s.blocks[1].energyShare, 16 / 41, 1e-15);
  assertClose(s.relativeError, Math.sqrt(19 / 41), 1e-15);
  // The kept dimensions are the plan's `keep`, not the largest σ: keeping the
  // smaller σ drops 16 of 25.
  const swapped = layerPlan("lora_te1_a", [4, 3], 1, { keep: [1] });
  assertClose(summarizeByBlock([swapped]).relativeError, 4 / 5, 1e-15);
  assertEquals(summarizeByBlock([]), { blocks: [], relativeError: 0 });
});

Deno.test("formatTable and number formats", () => {
  const text = formatTable(
    [{ title: "block" }, { title: "rank", align: "right" }, { title: "note" }],
    [["TE1", "96", "a"], "---", ["IN04", "1280", ""]],
  );
  assertEquals(text, "block  rank  note\nTE1      96  a\n---\nIN04   1280");
  assertEquals(formatCount(1234567), "1,234,567");
  assertEquals(formatCount(999), "999");
  assertEquals(formatPercent(0.123456), "12.35 %");
  assertEquals(formatPercent(0.0000312), "0.00312 %");
  assertEquals(formatPercent(1), "100.00 %");
  assertEquals(formatPercent(null), "–");
});

function fakeOutput(recipe: string, layers: LayerSummary[], extra: Partial<OutputSummary> = {}) {
  const rankBefore = layers.reduce((n, l) => n + l.dims, 0);
  const rankAfter = layers.reduce((n, l) => n + l.kept, 0);
  return {
    lora: "dir/my<lora>.safetensors",
    recipe,
    path: `out/my_lora_${recipe}.safetensors`,
    bytes: 123456,
    written: false,
    threshold: -1.5,
    rankBefore,
    rankAfter,
    relativeError: summarizeByBlock(layers).relativeError,
    layers,
    ...extra,
  } satisfies OutputSummary;
}

Deno.test("formatDryRun: file size, ranks, error and a row per block", () => {
  const layers = [
    layerPlan("lora_te1_a", [4, 3], 1),
    layerPlan("lora_unet_middle_block_1_proj_in", [2, 1, 1], 3),
  ];
  const text = formatDryRun([
    fakeOutput("fro_ckpt=1,thr=-1.5", layers),
    fakeOutput("spn_lora=1,size=0.1", layers, {
      threshold: -Infinity,
      cut: {
        accounting: "file",
        totalRank: 4,
        threshold: -0.5,
        targetMiB: 0.1,
        realBytes: 100000,
        nextBytes: 110000,
      },
    }),
  ]);
  const lines = text.split("\n");
  assert(lines.includes("dir/my<lora>.safetensors · fro_ckpt=1,thr=-1.5"), text);
  assert(text.includes("123,456 B (0.118 MiB)"), text);
  assert(text.includes("usable rank  5 → 4 (80.00 %)"), text);
  // √(9/31): TE1 drops σ=3 of 4²+3²+2²+1²+1².
  assert(text.includes(`error        ${formatPercent(Math.sqrt(9 / 31))}`), text);
  assert(text.includes("threshold    −∞"), text);
  assert(text.includes("threshold    -1.5"), text);
  assert(text.includes("size cut     file 100,000 B"), text);
  const te1 = lines.find((l) => l.trimStart().startsWith("TE1 "))!;
  assertEquals(te1.trim().split(/\s{2,}/), ["TE1", "1", "2", "1", "50.00 %", "80.65 %", "60.00 %"]);
  const total = lines.find((l) => l.trimStart().startsWith("total "))!;
  assertEquals(total.trim().split(/\s{2,}/).slice(0, 4), ["total", "2", "5", "4"]);
});

Deno.test("externalReferences: finds what a browser would fetch", () => {
  assertEquals(
    externalReferences(`<svg xmlns="http://www.w3.org/2000/svg"><a href="#x"/></svg>`),
    [],
  );
  for (
    const html of [
      `<script>1</script>`,
      `<img src="a.png">`,
      `<link rel="stylesheet" href="s.css">`,
      `<a href="https://example.com">x</a>`,
      `<style>body { background: url(bg.png) }</style>`,
      `<style>@import "x.css";</style>`,
      `<svg><image href="data:image/png;base64,AAAA"/></svg>`,
    ]
  ) {
    assert(externalReferences(html).length > 0, html);
  }
  assertEquals(escapeHtml(`<a href="x">&'`), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
});

Deno.test("renderReport: one self-contained page with every chart", async () => {
  const layers = [
    layerPlan("lora_te1_a", [0.4, 0.3, 0.01], 2, { baseFrobenius: 5 }),
    layerPlan("lora_te1_b", [0.2, 0.1, 0.05], 1, { baseFrobenius: 4 }),
    layerPlan("lora_unet_input_blocks_4_1_proj_in", [0.5, 0.2], 2, { baseFrobenius: 3 }),
    layerPlan("lora_unet_output_blocks_2_1_proj_out", [0.3, 0.0], 1, { baseFrobenius: 2 }),
  ];
  const curve: CurvePoint[] = [
    { rank: 0, threshold: Infinity, bytes: 1000, relativeError: 1 },
    { rank: 4, threshold: -0.7, bytes: 40000, relativeError: 0.3 },
    { rank: 9, threshold: -1.6, bytes: 90000, relativeError: 0 },
  ];
  const html = await renderReport({
    outputs: [
      fakeOutput("fro_ckpt=1,thr=-1.5", layers, { curve }),
      fakeOutput("spn_lora=1,size=0.05", layers.map((l) => ({ ...l, kept: 1, keep: [0] })), {
        curve,
      }),
    ],
    checkpoint: "base & co.safetensors",
    footer: "footer <text>",
  });
  assertEquals(externalReferences(html), []);
  assert(html.startsWith("<!DOCTYPE html>"));
  // Trade-off, kept share per block, one per-layer chart per recipe, spectra.
  assertEquals(html.match(/<svg\b/g)?.length, 5);
  for (
    const text of [
      "<title>resize-lora report</title>",
      "base &amp; co.safetensors",
      "dir/my&lt;lora&gt;.safetensors",
      "footer &lt;text&gt;",
      "r1: fro_ckpt=1,thr=-1.5",
      "r2: spn_lora=1,size=0.05",
      "Output file size (MiB)",
      "Relative Frobenius error of ΔW (%)",
      "σᵢ / ‖W_base‖_F",
      "IN04",
      "OUT02",
    ]
  ) {
    assert(html.includes(text), text);
  }
  assert(!html.includes("NaN"), "NaN in the page");
  assert(!/my<lora>/.test(html), "unescaped name");
});

Deno.test("renderReport: a LoRA without resized layers, and no output at all", async () => {
  const html = await renderReport({ outputs: [fakeOutput("thr=-1", [])] });
  assertEquals(externalReferences(html), []);
  assertEquals(html.match(/<svg\b/g)?.length, 2);
  assert(html.includes("No layer of this LoRA is resized"));
  const empty = await renderReport({ outputs: [], title: "nothing" });
  assert(empty.includes("<h1>nothing</h1>") && !empty.includes("<svg"));
});

// ---------------------------------------------------------------------------
// On the conformance base (CPU backend).

/** Header JSON text and data-section size of a safetensors file. */
async function fileParts(path: string): Promise<{ header: string; dataBytes: number }> {
  const bytes = await Deno.readFile(path);
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)).trimEnd();
  return { header, dataBytes: bytes.length - 8 - headerLength };
}

/**
 * Size of a file identical to the written one except for the threshold in
 * `resize_params` (header JSON padded to 8 bytes, reference layout).
 */
async function sizeWithThreshold(path: string, threshold: number): Promise<number> {
  const { header, dataBytes } = await fileParts(path);
  const pattern = /(\\"threshold\\": )([^,}]+)/;
  assert(pattern.test(header), `${path}: no threshold in resize_params`);
  const changed = header.replace(pattern, (_m, key) => key + pyJsonDumps(threshold));
  const length = new TextEncoder().encode(changed).length;
  return 8 + Math.ceil(length / 8) * 8 + dataBytes;
}

Deno.test("plan on the conformance base: dry-run sizes, curves and block errors match the written files", async () => {
  const out = await Deno.makeTempDir({ prefix: "report_test_" });
  await using backend = await selectBackend("cpu");
  const recipes = [
    "fro_ckpt=1,thr=-3.5", // threshold mode
    "spn_lora=1,size=0.06", // size mode, cut
    "fro_ckpt=1,thr=10", // keeps nothing
    "fro_ckpt=1,size=1000", // keeps everything
  ];
  const options = {
    checkpoint: BASE,
    loras: [LORA_B],
    recipes: recipes.join(":"),
    normsCache: false as const,
    backend,
    outputFolder: out,
  };
  try {
    const planned = (await plan({ ...options, curve: true })).outputs;
    const written = (await resize(options)).outputs;
    assertEquals(planned.map((o) => o.recipe), recipes);
    assert(planned[1].cut !== undefined, "size=0.06 should cut the ranking");
    for (const [i, p] of planned.entries()) {
      const w = written[i];
      assertEquals(p.written, false);
      assertEquals(w.path, p.path);
      assertEquals((await Deno.stat(w.path)).size, p.bytes, p.recipe);

      // The per-block view rebuilds the pipeline's own selection.
      const summary = summarizeByBlock(p.layers);
      assertClose(summary.relativeError, p.relativeError, 1e-12, p.recipe);
      assertEquals(summary.blocks.reduce((n, b) => n + b.rankAfter, 0), p.rankAfter);

      // The curve: from nothing kept to everything, sizes up, errors down.
      const curve = p.curve!;
      assert(curve.length > 2, "curve points");
      for (let k = 1; k < curve.length; k++) {
        assert(curve[k].rank > curve[k - 1].rank, `rank at ${k}`);
        assert(curve[k].bytes >= curve[k - 1].bytes, `bytes at ${k}: ${p.recipe}`);
        assert(curve[k].relativeError <= curve[k - 1].relativeError, `error at ${k}`);
      }
      assertEquals([curve[0].rank, curve[0].relativeError], [0, 1]);
      assertEquals([curve.at(-1)!.rank, curve.at(-1)!.relativeError], [p.rankBefore, 0]);
    }
    // The curve's ends are the written files of the recipes that keep nothing
    // and everything (only the threshold text in resize_params differs).
    const [, , none, all] = planned;
    assertEquals(none.rankAfter, 0);
    assertEquals(none.curve![0].bytes, await sizeWithThreshold(none.path, Infinity));
    assertEquals(all.rankAfter, all.rankBefore);
    const last = all.curve!.at(-1)!;
    assertEquals(last.bytes, await sizeWithThreshold(all.path, last.threshold));

    const text = formatDryRun(planned);
    for (const p of planned) assert(text.includes(formatCount(p.bytes) + " B"), p.recipe);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
