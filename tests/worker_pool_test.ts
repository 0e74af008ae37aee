/**
 * What the CPU backend posts to its workers: formed factor bytes posted ahead to each worker are
 * bounded (they exist from posting until the worker answers, so a worker's usual depth of big
 * jobs would hold hundreds of megabytes), and a LoHa layer's Khatri–Rao factors are formed by
 * the worker from the four small factors.
 */

import { assert, assertEquals } from "./assert.ts";
import { FormedFloatData } from "../src/linalg/factor_matrix.ts";
import { WorkerPool } from "../src/linalg/cpu/pool.ts";
import { packWorkItem, postedBytes, type WorkItem } from "../src/linalg/cpu/work_items.ts";
import { createCpuBackend } from "../src/linalg/cpu/backend.ts";
import { hadamardLowRank } from "../src/linalg/khatri_rao.ts";

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

Deno.test("a LoHa layer's Khatri–Rao factors travel to a worker as their four small factors, and decompose as the formed factors do", async () => {
  const r = (seed: number) => () => (seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5;
  const next = r(5);
  const m = (rows: number, cols: number, name: string) => ({
    data: {
      dtype: "F32" as const,
      bytes: new Uint8Array(Float32Array.from({ length: rows * cols }, next).buffer),
    },
    rows,
    cols,
    name,
  });
  const loha = hadamardLowRank({
    w1a: m(300, 4, "w1a"),
    w1b: m(4, 200, "w1b"),
    w2a: m(300, 4, "w2a"),
    w2b: m(4, 200, "w2b"),
    scale: 0.25,
  });
  const task: WorkItem = { kind: "decompose", layer: loha };
  const small = 4 * 2 * (300 * 4 + 4 * 200);
  assertEquals(postedBytes(task), small);
  const { task: posted, transfer } = packWorkItem(task);
  assertEquals(transfer.reduce((n, b) => n + b.byteLength, 0), small);
  assert(posted.kind === "decompose" && posted.layer.up.bytes.byteLength === 0, "nothing formed");
  // The same factors formed on this thread, as plain bytes.
  const formed = {
    ...loha,
    up: { dtype: "F32" as const, bytes: loha.up.bytes },
    down: { dtype: "F32" as const, bytes: loha.down.bytes },
  };
  await using backend = await createCpuBackend({ workers: 2, inlineWork: 0 });
  assertEquals(await backend.decompose([loha]), await backend.decompose([formed]));
});
