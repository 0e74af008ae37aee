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

async function timeCat(path: string): Promise<number> {
  const t0 = performance.now();
  const { success } = await new Deno.Command("cat", { args: [path], stdout: "null" }).output();
  if (!success) throw new Error(`cat ${path} failed`);
  return (performance.now() - t0) / 1000;
}

async function timeReadAll(path: string): Promise<{ seconds: number; bytes: number }> {
  const t0 = performance.now();
  await using f = await SafetensorsFile.open(path);
  let bytes = 0;
  for (const t of f.tensors) bytes += (await f.readBytes(t.name)).byteLength;
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
 * Runs the benchmark on one file: `cat` and a full tensor-by-tensor read,
 * twice each, interleaved, then the median header-only open.
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
    rows.push({ what: `cat > /dev/null (run ${run})`, seconds: await timeCat(path), bytes: size });
    const read = await timeReadAll(path);
    rows.push({ what: `SafetensorsFile readBytes, all tensors (run ${run})`, ...read });
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
  const cat = Math.min(...rows.filter((r) => r.what.startsWith("cat")).map((r) => r.seconds));
  const read = Math.min(
    ...rows.filter((r) => r.what.startsWith("SafetensorsFile readBytes")).map((r) => r.seconds),
  );
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
  console.log(`\nbest read / best cat = ${(read / cat).toFixed(2)}× (target ≤ 1.5×)`);
}
