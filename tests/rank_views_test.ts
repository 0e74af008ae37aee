/**
 * The rank totals of `inspect`, the dry run and the run summary: "stored rank" (r as stored) and
 * "usable rank" (min(r, out, in′) per layer, all-zero layers excluded) agree across the views, in
 * total and per block, and match the files' shapes.
 */
import { assert, assertEquals } from "./assert.ts";
import { inspect } from "../src/inspect.ts";
import { formatInspectTable } from "../src/report/inspect.ts";
import { formatDryRun, summarizeByBlock } from "../src/report/dry_run.ts";
import { selectBackend } from "../src/linalg/select_backend.ts";
import { loadLora } from "../src/lora/lora_file.ts";
import { plan } from "../src/resize.ts";
import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { main } from "../cli.ts";

const FIXTURES = "tests/fixtures";
const BASE = `${FIXTURES}/micro_sdxl_base.safetensors`;

/** Whether a layer's up or down weight is all zeroes (so is its ΔW). */
async function isZero(file: SafetensorsFile, layer: string): Promise<boolean> {
  for (const part of ["lora_up", "lora_down"]) {
    const values = await file.readFloat64(`${layer}.${part}.weight`);
    if (values.every((v) => v === 0)) return true;
  }
  return false;
}

for (const file of ["microA_r8_te.safetensors", "microB-locon-r8c4.safetensors"]) {
  Deno.test(`rank totals agree between inspect, the dry run and the summary (${file})`, async () => {
    const lora = `${FIXTURES}/${file}`;
    // From the file's shapes alone.
    const model = await loadLora(lora);
    await using tensors = await SafetensorsFile.open(lora);
    let stored = 0;
    let usable = 0;
    for (const { name, factors } of model.layers) {
      stored += factors.rank;
      if (!await isZero(tensors, name)) {
        usable += Math.min(factors.rank, factors.out, factors.inFlat);
      }
    }

    await using backend = await selectBackend("cpu");
    const inspected = await inspect({ lora, checkpoint: BASE, backend, normsCache: false });
    const [planned] = (await plan({ checkpoint: BASE, loras: [lora], backend, normsCache: false }))
      .outputs;
    assertEquals([inspected.totalRank, inspected.usableRank], [stored, usable]);
    assertEquals(inspected.recipes[0].rankBefore, usable);
    assertEquals(planned.rankBefore, usable);
    assertEquals(inspected.recipes[0].rankAfter, planned.rankAfter);

    // Per block: inspect's usable rank is the dry run's "rank before".
    const blocks = summarizeByBlock(planned.layers).blocks;
    assertEquals(
      inspected.blocks.map((b) => [b.block, b.usableRank]),
      blocks.map((b) => [b.block, b.rankBefore]),
    );

    // Each view labels what it counts.
    const table = formatInspectTable(inspected);
    assert(table.includes(`stored rank ${fmt(stored)}, usable rank ${fmt(usable)},`), table);
    assert(table.includes(`: usable rank ${fmt(usable)} → ${fmt(planned.rankAfter)},`), table);
    assert(table.includes("stored rank: r as stored in the file; usable rank: min(r, out, in′)"));
    const dry = formatDryRun([planned]);
    assert(dry.includes(`  usable rank  ${fmt(usable)} → ${fmt(planned.rankAfter)} (`), dry);

    const stdout: string[] = [];
    const { log, error } = console;
    console.log = (...a: unknown[]) => stdout.push(a.join(" "));
    console.error = () => {}; // microA's all-zero layer warning
    try {
      assertEquals(
        await main([BASE, lora, "--dry_run", "--no_norms_cache", "-d", "cpu"]),
        0,
      );
    } finally {
      console.log = log;
      console.error = error;
    }
    assert(stdout.join("\n").includes(`usable rank  ${fmt(usable)} →`), stdout.join("\n"));
  });
}

function fmt(n: number): string {
  return n.toLocaleString("en-US");
}
