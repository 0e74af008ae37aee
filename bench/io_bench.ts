/**
 * I/O benchmark: reading a whole SDXL checkpoint tensor by tensor through
 * `SafetensorsFile` against `cat file > /dev/null` on the same (page-cached)
 * file, interleaved, plus the header-only open.
 *
 * ```sh
 * deno run -A bench/io_bench.ts              # full size (generates .bench/ fixtures once)
 * deno run -A bench/io_bench.ts --scale 1/8  # a smaller base
 * ```
 *
 * @module
 */

import { SafetensorsFile } from "../src/safetensors/reader.ts";
import { ensureBenchFixtures } from "./fixtures.ts";

/** One measured row. */
export interface IoBenchRow {
  /** What was measured. */
  readonly what: string;
  /** Seconds. */
  readonly seconds: number;
  /** Bytes read. */
  readonly bytes: number;
}

const CAT = "cat > /dev/null";
const READ_NEW = "readBytes, every tensor, new buffers";
const READ_INTO = "readBytes, every tensor, one reused buffer (`into`)";

async function timeCat(path: string): Promise<number> {
  const t0 = performance.now();
  const { success } = await new Deno.Command("cat", { args: [path], stdout: "null" }).output();
  if (!success) throw new Error(`cat ${path} failed`);
  return (performance.now() - t0) / 1000;
}

/** Opens the file and reads every tensor in data order, each into a new buffer or one reused buffer. */
async function timeReadAll(
  path: string,
  reuse: boolean,
): Promise<{ seconds: number; bytes: number }> {
  const t0 = performance.now();
  await using f = await SafetensorsFile.open(path);
  const largest = Math.max(0, ...f.tensors.map((t) => t.dataOffsets[1] - t.dataOffsets[0]));
  const into = reuse ? new Uint8Array(largest) : undefined;
  let bytes = 0;
  for (const t of f.tensors) bytes += (await f.readBytes(t.name, { into })).byteLength;
  return { seconds: (performance.now() - t0) / 1000, bytes };
}

async function timeOpen(path: string, repeat: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < repeat; i++) {
    const t0 = performance.now();
    const f = await SafetensorsFile.open(path);
    f.close();
    times.push((performance.now() - t0) / 1000);
  }
  return times.sort((a, b) => a - b)[Math.floor(repeat / 2)];
}

/**
 * Runs the benchmark on one file: `cat`, a tensor-by-tensor read into new
 * buffers and one into a reused buffer, twice each, interleaved, then the
 * median header-only open.
 *
 * @example
 * ```ts ignore
 * import { runIoBench } from "./io_bench.ts";
 * const rows = await runIoBench(".bench/sdxl_base_full.safetensors");
 * ```
 */
export async function runIoBench(path: string): Promise<IoBenchRow[]> {
  const size = (await Deno.stat(path)).size;
  await timeCat(path); // warm the page cache so both sides read from memory
  const rows: IoBenchRow[] = [];
  for (let run = 1; run <= 2; run++) {
    rows.push({ what: `${CAT} (run ${run})`, seconds: await timeCat(path), bytes: size });
    rows.push({ what: `${READ_NEW} (run ${run})`, ...await timeReadAll(path, false) });
    rows.push({ what: `${READ_INTO} (run ${run})`, ...await timeReadAll(path, true) });
  }
  rows.push({
    what: "SafetensorsFile.open (header only, median of 20)",
    seconds: await timeOpen(path, 20),
    bytes: 0,
  });
  return rows;
}

function parseScale(args: string[]): number {
  const i = args.indexOf("--scale");
  if (i < 0) return 1;
  const [num, den] = args[i + 1].split("/").map(Number);
  return den ? num / den : num;
}

if (import.meta.main) {
  const scale = parseScale(Deno.args);
  const { base } = await ensureBenchFixtures({ scale, log: (line) => console.error(line) });
  const rows = await runIoBench(base);
  const best = (what: string) =>
    Math.min(...rows.filter((r) => r.what.startsWith(what)).map((r) => r.seconds));
  console.log(`file: ${base} (${(rows[0].bytes / 1e9).toFixed(2)} GB, page-cached)\n`);
  console.log(`| what | time | throughput |`);
  console.log(`|---|---:|---:|`);
  for (const r of rows) {
    const rate = r.bytes ? `${(r.bytes / r.seconds / 1e9).toFixed(2)} GB/s` : "";
    const time = r.seconds < 0.1
      ? `${(r.seconds * 1000).toFixed(2)} ms`
      : `${r.seconds.toFixed(2)} s`;
    console.log(`| ${r.what} | ${time} | ${rate} |`);
  }
  console.log();
  for (const what of [READ_NEW, READ_INTO]) {
    console.log(
      `best "${what}" / best cat = ${(best(what) / best(CAT)).toFixed(2)}× (target ≤ 1.5×)`,
    );
  }
}
