/**
 * `deno task bench`: every benchmark, one after the other, each printing its
 * own table (side-by-side figures come from the same run of each script).
 *
 * ```sh
 * deno task bench              # full size (generates 7.2 GB of fixtures in .bench/ once)
 * deno task bench --scale 0.25 # quicker
 * ```
 *
 * The WebGPU comparison runs at 1/16 width unless a real (non-fallback)
 * adapter is present: software adapters are far slower than the CPU path.
 *
 * @module
 */

import { parseArgs } from "node:util";

const { values } = parseArgs({ args: Deno.args, options: { scale: { type: "string" } } });
const scale = values.scale ?? "1";
const adapter = await navigator.gpu?.requestAdapter();
const realGpu = adapter !== null && adapter !== undefined && !adapter.info.isFallbackAdapter;

const benches: [string, string[]][] = [
  ["io_bench.ts", scale === "1" ? [] : ["--scale", scale]],
  ["linalg_bench.ts", ["--scale", scale]],
  ["resize_bench.ts", ["--scale", scale]],
  ["lycoris_resize_bench.ts", ["--scale", scale]],
  ["gpu_bench.ts", ["--scale", realGpu ? scale : String(Math.min(Number(scale), 0.0625))]],
];
for (const [script, args] of benches) {
  console.log(`\n## bench/${script} ${args.join(" ")}\n`);
  const { success } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(script, import.meta.url).pathname, ...args],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!success) Deno.exit(1);
}
