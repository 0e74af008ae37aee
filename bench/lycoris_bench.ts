/**
 * LoHa decomposition routes side by side on one CPU thread, for SDXL layer
 * shapes: the Gram of the Khatri–Rao factors (rank r1·r2) against the dense
 * ΔW written as a product with an identity (rank min(out, in)). Both are
 * exact; the cheaper one is the route `hadamardRoute` picks. Prints a table.
 *
 * Usage: `deno run -A bench/lycoris_bench.ts [--dense]` (--dense also times
 * the dense route, which takes seconds per layer).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { hadamardLowRank } from "../src/linalg/khatri_rao.ts";
import type { FactorMatrix } from "../src/linalg/factor_matrix.ts";
import { encodeFloats } from "../src/safetensors/dtype.ts";
import { syntheticMatrix } from "../src/testing/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { dense: { type: "boolean", default: false } },
});

const SHAPES: [string, number, number][] = [
  ["attn 640×640", 640, 640],
  ["attn2 k 640×2048", 640, 2048],
  ["attn 1280×1280", 1280, 1280],
  ["ff.net.2 1280×5120", 1280, 5120],
  ["ff.net.0 10240×1280", 10240, 1280],
];

function factor(rows: number, cols: number, name: string): FactorMatrix {
  const bytes = encodeFloats(syntheticMatrix(rows, cols, { name }), "F16");
  return { data: { dtype: "F16", bytes }, rows, cols, name };
}

await using backend = await createCpuBackend({ workers: 0 });
const rows: string[] = [];
for (const [what, out, inFlat] of SHAPES) {
  for (const r of [8, 16]) {
    const f = {
      w1a: factor(out, r, "w1a"),
      w1b: factor(r, inFlat, "w1b"),
      w2a: factor(out, r, "w2a"),
      w2b: factor(r, inFlat, "w2b"),
      scale: 1,
    };
    const routes = values.dense ? ["khatri-rao", "dense"] as const : ["khatri-rao"] as const;
    for (const route of routes) {
      if (route === "dense" && out * inFlat > 1280 * 2048) continue;
      const layer = hadamardLowRank(f, route);
      await backend.decompose([layer]); // warm-up (kernels, JIT)
      const t0 = performance.now();
      const [d] = await backend.decompose([layer]);
      const ms = performance.now() - t0;
      const macs = (out + inFlat) * layer.rank ** 2 / 2;
      rows.push(
        `| ${what} | ${r}×${r} | ${route} | ${layer.rank} | ${(macs / 1e6).toFixed(0)} M | ${
          ms.toFixed(0)
        } ms | ${d.sigma.length} |`,
      );
      console.error(rows.at(-1));
    }
  }
}
console.log("| layer | LoHa rank | route | inner rank | Gram MACs | decompose | σ kept |");
console.log("|---|---|---|---|---|---|---|");
for (const row of rows) console.log(row);
