/**
 * The CPU backend's worker pool bounds the formed bytes posted ahead to each worker: formed
 * factors (a LoHa layer's Khatri–Rao factors) exist from posting until the worker answers, so
 * posting a worker's usual depth of big jobs would hold hundreds of megabytes.
 */

import { assert, assertEquals } from "./assert.ts";
import { FormedFloatData } from "../src/linalg/factor_matrix.ts";
import { WorkerPool } from "../src/linalg/cpu/pool.ts";
import type { WorkItem } from "../src/linalg/cpu/work_items.ts";

const MIB = 2 ** 20;

Deno.test("a worker never has more than 96 MiB of formed bytes posted ahead, and every job still runs", async () => {
  const pool = new WorkerPool(2);
  try {
    // Rank-1 layers with a 40 MiB formed up factor each: cheap to decompose, heavy to post.
    const out = 10 * MIB;
    const task = (): WorkItem => ({
      kind: "decompose",
      layer: {
        up: new FormedFloatData("F32", out, () => new Uint8Array(4 * out).fill(0x3c)),
        down: new FormedFloatData("F32", 2, () => new Uint8Array(new Float32Array([1, 2]).buffer)),
        out,
        rank: 1,
        inFlat: 2,
        scale: 1,
      },
    });
    const results = await Promise.all(Array.from({ length: 10 }, () => pool.run([task()])));
    assertEquals(results.length, 10);
    for (const [d] of results) assert("sigma" in d && d.sigma[0] > 0, "each job decomposed");
    // Two 40 MiB jobs fit under the bound; the pool's depth of four would have posted 160 MiB.
    assert(pool.peakBytesAhead <= 96 * MIB, `${pool.peakBytesAhead / MIB} MiB posted ahead`);
    assertEquals(pool.peakBytesAhead, 80 * MIB + 16);
  } finally {
    await pool.close();
  }
});
